"""edgeft.yaml → typed, frozen config: one section per stage, every problem reported at once.

The dataclasses below are the specification: each field's default is the default edgeft uses,
with a comment saying why where it is not obvious. Relative paths are resolved against the
config file's directory.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeft.core import formats
from edgeft.core.errors import ConfigError, InputError, shown
from edgeft.core.rowfilter import compile_filter

# The values a key may take, named once (the checks below and the code that branches on them).
GGUF_TYPES = tuple(formats.GGUF_TYPES)
ONNX_TYPES = tuple(formats.ONNX_TYPES)
QUANTIZATIONS = ("none", "nf4", "fp4")  # train.quantization: none = plain LoRA, else QLoRA's 4-bit type
# train.method: an adapter on the base in its compute dtype, the same on a 4-bit base, or every weight.
METHODS = ("lora", "qlora", "full")
# train.learning_rate when not given: an adapter's few new weights take a large step; every weight of
# a pre-trained model moved that far loses what it knew. Full's value: measured on the real example
# (docs/benchmarks.md, Training methods).
DEFAULT_LEARNING_RATE = {"lora": 1e-3, "qlora": 1e-3, "full": 5e-5}
COMPUTE_DTYPES = ("auto", "bfloat16", "float16", "float32")
MERGE_STRATEGIES = ("full-precision", "dequantized")
MERGE_DTYPES = ("float32", "float16", "bfloat16")
# Canonical field names of an example row, which data.columns may map from the user's names.
CANONICAL_FIELDS = ("instruction", "input", "output", "messages", "prompt", "completion", "text", "system")
# Names become folder and file names (dist/<name>/, <name>-q4_k_m.gguf) and GGUF metadata.
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
# data.augment.paraphrase_instruction's default (edgeft/data/paraphrase.py adds three worked examples).
PARAPHRASE_INSTRUCTION = (
    "You rewrite a message in other words, keeping its meaning and every name, number and "
    "quoted text. You never answer it."
)
# align.loss_type: trl 1.16's DPO losses (DPOConfig.loss_type), each on (chosen, rejected) pairs.
DPO_LOSSES = (
    "sigmoid",
    "hinge",
    "ipo",
    "exo_pair",
    "nca_pair",
    "robust",
    "bco_pair",
    "sppo_hard",
    "aot",
    "aot_unpaired",
    "apo_zero",
    "apo_down",
    "discopop",
    "sigmoid_norm",
)
ALIGN_METHODS = ("dpo",)
# align.learning_rate when not given: DPO moves a model that SFT already fitted, in small steps
# (the DPO paper's 5e-7 for every weight; adapters take the larger step LoRA recipes use).
DEFAULT_ALIGN_LEARNING_RATE = {"lora": 5e-5, "qlora": 5e-5, "full": 5e-7}
LR_SCHEDULERS = ("cosine", "linear", "constant", "constant_with_warmup", "cosine_with_restarts", "polynomial")


@dataclass(frozen=True)
class AugmentConfig:
    # Noisy copies of each training conversation's user turns (0: off): keyboard-neighbour, dropped,
    # doubled and swapped letters, case and whitespace noise; digits, names and quotes kept exact.
    typos: int = 0
    typo_rate: float = 0.05  # chance of an edit per letter
    # Rewritten copies of each training conversation's user turns by a local model (0: off), each
    # checked: not empty, not the source again, not rambling, same numbers, names and quoted text.
    paraphrases: int = 0
    paraphrase_model: str | None = None  # HF id or model directory; unset: base_model (an instruct model)
    # 0: greedy, one paraphrase per conversation; above 0: sampled (seeded) at this temperature.
    paraphrase_temperature: float = 0.0
    paraphrase_instruction: str = PARAPHRASE_INSTRUCTION  # the paraphrasing model's system turn
    seed: int = 0  # each copy is a function of (seed, the row, the copy number): reproducible byte for byte


@dataclass(frozen=True)
class DataConfig:
    train: str = ""  # JSONL file: alpaca rows or chat `messages` rows
    validation: str | None = None  # explicit validation file; else split off `train`
    val_ratio: float = 0.1
    seed: int = 0  # the split is a deterministic function of (rows, seed)
    # Prepended to every conversation without a system turn; {field} is filled from the row's field.
    system_prompt: str | None = None
    # Keep only rows passing these conditions on their fields, e.g. "rating >= 4 and not edited"
    # (edgeft/core/rowfilter.py: comparisons, and/or/not, len(), lower(); never Python's eval).
    filter: str | list[str] | None = None
    # Your field name for each canonical one, e.g. {prompt: question, completion: answer}.
    columns: dict[str, str] = field(default_factory=dict)
    dedup: bool = False  # drop exact duplicates before splitting (else they are warnings)
    near_duplicate_threshold: float = 0.9  # character 5-gram Jaccard similarity
    # Of the training split only, after the checks; the validation split is never augmented.
    augment: AugmentConfig = field(default_factory=AugmentConfig)


@dataclass(frozen=True)
class TrainConfig:
    # lora: an adapter on the base; qlora: the same on the base loaded in 4-bit (train.quantization,
    # nf4 unless given); full: every weight trained, nothing to merge (and no adapter to ship).
    method: str = "lora"
    # QLoRA's 4-bit type: "nf4" (or "fp4") loads the base in 4-bit through bitsandbytes. Setting it
    # with method lora means qlora (how QLoRA was asked for before train.method).
    quantization: str = "none"
    double_quant: bool = True  # quantize the 4-bit scales too: ~0.4 bit/param less, same quality
    compute_dtype: str = "auto"  # auto: bfloat16 on GPUs that have it, float16 on others, float32 on CPU
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    target_modules: str | list[str] = "all-linear"
    dora: bool = (
        False  # weight-decomposed LoRA (peft's use_dora): a magnitude vector per layer besides A and B
    )
    learning_rate: float | None = None  # None: 1e-3 for lora / qlora, 5e-5 for full (DEFAULT_LEARNING_RATE)
    lr_scheduler: str = "cosine"
    warmup_ratio: float = 0.05
    weight_decay: float = 0.0
    epochs: float = 3.0
    max_steps: int = -1  # > 0 overrides epochs
    batch_size: int = 8
    gradient_accumulation: int = 1
    max_seq_length: int = 512
    gradient_checkpointing: bool = False  # trade ~30% speed for much less activation memory
    seed: int = 0
    assistant_only_loss: bool = True  # loss on what the assistant says, not on the prompt
    packing: bool = False  # concatenate examples into max_seq_length blocks (fewer pad tokens)
    logging_steps: int = 5
    eval_steps: int = 0  # evaluate (and checkpoint) every N steps; 0 = once per epoch
    save_total_limit: int = 2  # checkpoints kept for --resume (the best one is always kept)
    early_stopping_patience: int = 0  # stop after N evaluations without improvement; 0 = off
    # An evaluation counts as an improvement only if validation loss falls by more than this
    # (nats): a plateau creeping down by 1e-4 per evaluation otherwise never stops.
    early_stopping_threshold: float = 0.0


@dataclass(frozen=True)
class AlignConfig:
    # Preference tuning after SFT (stage `align`, trl's DPOTrainer): it continues the train stage's
    # adapter (or model, after train.method full) on preference pairs, against a frozen copy of
    # it as the reference. Off unless `pairs` is given.
    pairs: str = ""  # preference rows: {prompt, chosen, rejected}, text or conversations (trl's formats)
    validation: str | None = None  # held-out pairs; else split off `pairs` (a prompt's pairs stay together)
    val_ratio: float = 0.1
    seed: int = 0
    method: str = "dpo"
    beta: float = 0.1  # how far the model may move from the reference (higher: less)
    loss_type: str = "sigmoid"  # trl's DPO loss (DPO_LOSSES): sigmoid is the DPO paper's
    learning_rate: float | None = (
        None  # None: 5e-5 with an adapter, 5e-7 for full (DEFAULT_ALIGN_LEARNING_RATE)
    )
    lr_scheduler: str = "cosine"
    warmup_ratio: float = 0.1
    epochs: float = 1.0
    max_steps: int = -1  # > 0 overrides epochs
    batch_size: int = 4
    gradient_accumulation: int = 1
    max_length: int | None = None  # prompt + answer tokens; None: train.max_seq_length
    logging_steps: int = 5
    eval_steps: int = 0  # evaluate every N steps; 0 = once per epoch


@dataclass(frozen=True)
class MergeConfig:
    # float32 keeps the merged model as close to the trained one as possible; the export
    # stage makes the smaller types.
    dtype: str = "float32"
    # After QLoRA: "full-precision" merges into the original weights (the default: the adapter
    # corrects the quantized base, and is applied to the better one); "dequantized" merges into
    # the NF4 weights the adapter saw, dequantized. Both are measured either way.
    strategy: str = "full-precision"
    compare_prompts: int = 16  # validation conversations used to compare the merge strategies


@dataclass(frozen=True)
class GGUFConfig:
    types: list[str] = field(default_factory=lambda: ["f16", "q8_0", "q4_k_m"])
    # Also the adapter as its own GGUF with an f16 base GGUF: one base, swappable adapters.
    lora: bool = False
    # Importance matrix for the quantizer: none, auto (computed on the training split rendered with
    # the chat template), or a file made by llama-imatrix.
    imatrix: str = "auto"
    imatrix_text: str | None = None  # general text appended to the training split for imatrix: auto
    # Tokens of text imatrix: auto runs through the unquantized model: a larger training split is
    # sampled by row (seeded) down to this. Each token is a forward pass of the f32 model (a 0.5B
    # model took 15+ minutes for 26k tokens on 2 cores); docs/quantization.md measures the effect.
    imatrix_tokens: int = 16384
    # Per type: tensor name pattern → ggml type (llama-quantize --tensor-type), or "fit": tensors whose
    # width the type's blocks cannot take get the 32-block type of the same size, not llama.cpp's larger one.
    tensor_types: dict[str, dict[str, str] | str] = field(default_factory=dict)


@dataclass(frozen=True)
class ONNXConfig:
    types: list[str] = field(default_factory=lambda: ["fp32", "int8"])
    opset: int = 17


@dataclass(frozen=True)
class ExportConfig:
    gguf: GGUFConfig = field(default_factory=GGUFConfig)
    onnx: ONNXConfig = field(default_factory=ONNXConfig)


@dataclass(frozen=True)
class VerifyConfig:
    max_prompts: int = 8  # held-out prompts compared per artifact
    max_new_tokens: int = 48  # greedy generation length cap per prompt
    edge_cases: bool = (
        True  # also probe unicode, spaces, special-token text, an empty and a near-context prompt
    )
    context_tokens: int = 1024  # context verified: the near-context probe fills min(this, the model's) tokens
    # Also llama-perplexity's KL for every GGUF (an independent client), which must agree with edgeft's.
    second_opinion: bool = False


@dataclass(frozen=True)
class EvalConfig:
    max_examples: int = 100  # held-out examples scored per model
    max_new_tokens: int = 128  # greedy reply length cap
    # Regression gate (edgeft/judge/paired.py): an artifact fails on a metric only when, on the same
    # examples, it loses at least min_discordant that the fine-tuned model got right, the loss is
    # significant at alpha (mid-p McNemar; chrF: paired bootstrap) and it keeps less than min_relative.
    min_relative: float = 0.95  # the practical margin: a smaller drop is accepted however significant
    alpha: float = 0.05  # significance level of the one-sided paired test
    min_discordant: int = 3  # fewer lost examples than this never fail
    json: bool = False  # format compliance: replies must be JSON that parses
    json_schema: str | None = None  # …or JSON valid against this schema file
    regex: str | None = None  # …or replies that match this regular expression (whole reply)
    general_prompts: str | None = (
        None  # optional general-capability examples (any data format) to detect forgetting
    )
    forgetting_tolerance: float = 0.2  # flag forgetting when fine-tuned chrF drops more than this vs base


@dataclass(frozen=True)
class Config:
    name: str = ""  # names dist/<name>/ and the GGUF's general.name
    base_model: str = ""  # HF hub id, model directory, tiny:<size>[:<seed>], a real-model alias, a GGUF file or gguf:PACKAGE==VERSION
    workdir: str = "runs"  # stage directories go under <workdir>/<name>/
    dist_dir: str = "dist"
    trust_remote_code: bool = False
    license: str | None = (
        None  # SPDX id written into the GGUF files, the model card and the Ollama Modelfiles
    )
    registry: str = "registry"  # model registry directory (edgeft build --register; edgeft registry -c)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    align: AlignConfig = field(default_factory=AlignConfig)
    merge: MergeConfig = field(default_factory=MergeConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    verify: VerifyConfig = field(default_factory=VerifyConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    source: str = ""  # the config file (set by load_config)

    @property
    def root(self) -> Path:
        return Path(self.source).parent if self.source else Path.cwd()

    def path(self, p: str) -> Path:
        q = Path(p).expanduser()
        return q if q.is_absolute() else self.root / q

    @property
    def aligned(self) -> bool:
        """Whether the build tunes preferences after SFT (the align stage)."""
        return bool(self.align.pairs)

    @property
    def run_dir(self) -> Path:
        return self.path(self.workdir) / self.name

    @property
    def dist_path(self) -> Path:
        return self.path(self.dist_dir) / self.name

    def section(self, name: str) -> dict[str, Any]:
        return dataclasses.asdict(getattr(self, name))

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d.pop("source")
        return d


def _type_ok(value: Any, tp: Any) -> bool:
    origin = typing.get_origin(tp)
    if tp is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, a) for a in typing.get_args(tp))
    if tp is type(None):
        return value is None
    if origin is list:
        (item,) = typing.get_args(tp)
        return isinstance(value, list) and all(_type_ok(v, item) for v in value)
    if origin is dict:
        kt, vt = typing.get_args(tp)
        return isinstance(value, dict) and all(_type_ok(k, kt) and _type_ok(v, vt) for k, v in value.items())
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, tp)


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):  # optional keys may be left out, not null'd
        return " or ".join(_type_name(a) for a in typing.get_args(tp) if a is not type(None))
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


_SCIENTIFIC = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def _build(cls: Any, raw: Any, where: str, problems: list[str]) -> Any:
    if not isinstance(raw, dict):
        problems.append(f"{where or 'top level'}: expected a mapping, got {type(raw).__name__}")
        return cls()
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls) if f.name != "source"}
    kwargs = {}
    for key, value in raw.items():
        dotted = f"{where}.{key}" if where else str(key)
        if key not in fields:
            close = difflib.get_close_matches(str(key), sorted(fields), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else f" (known: {', '.join(sorted(fields))})"
            problems.append(f"unknown key {dotted!r}{hint}")
            continue
        tp = hints[key]
        if isinstance(value, str) and _SCIENTIFIC.fullmatch(value.strip()) and _type_ok(1.0, tp):
            value = float(value)  # YAML 1.1 (PyYAML) reads 1e-4 as text; it means the number
        if dataclasses.is_dataclass(tp):
            kwargs[key] = _build(tp, value if value is not None else {}, dotted, problems)
        elif not _type_ok(value, tp):
            problems.append(f"{dotted}: expected {_type_name(tp)}, got {shown(value)}")
        else:
            kwargs[key] = float(value) if tp is float else value
    return cls(**kwargs)


Bad = Callable[[bool, str], None]  # records `msg` as a problem when `cond` holds


def _check_values(cfg: Config, problems: list[str]) -> None:
    """Every value's range and every combination that cannot work, section by section."""

    def bad(cond: bool, msg: str) -> None:
        if cond:
            problems.append(msg)

    for check in (_check_names, _check_data, _check_train, _check_align, _check_choices, _check_stages):
        check(cfg, bad, problems)
    _check_gguf(cfg.export.gguf, bad)


def _check_names(cfg: Config, bad: Bad, problems: list[str]) -> None:
    bad(not cfg.name, "name: required (it names dist/<name>/ and the exported model)")
    bad(
        bool(cfg.name) and not NAME.fullmatch(cfg.name),
        f"name: {shown(cfg.name)} must start with an ASCII letter or digit and contain only ASCII letters, digits, "
        f"'-', '_' and '.' (at most 64): it names folders and files",
    )
    bad(not cfg.base_model, "base_model: required (HF id, model directory or tiny:<size>)")


def _check_data(cfg: Config, bad: Bad, problems: list[str]) -> None:
    bad(not cfg.data.train, "data.train: required (a JSONL file of examples)")
    bad(not 0 < cfg.data.val_ratio < 1, f"data.val_ratio: {cfg.data.val_ratio} must be in (0, 1)")
    bad(
        not 0 < cfg.data.near_duplicate_threshold <= 1,
        f"data.near_duplicate_threshold: {cfg.data.near_duplicate_threshold} must be in (0, 1] (a similarity)",
    )
    a = cfg.data.augment
    bad(a.typos < 0, f"data.augment.typos: {a.typos} must be 0 (off) or more copies")
    bad(
        not 0 < a.typo_rate <= 0.5,
        f"data.augment.typo_rate: {a.typo_rate} must be in (0, 0.5] (edits per letter)",
    )
    bad(a.paraphrases < 0, f"data.augment.paraphrases: {a.paraphrases} must be 0 (off) or more copies")
    bad(
        a.paraphrase_temperature < 0,
        f"data.augment.paraphrase_temperature: {a.paraphrase_temperature} must be 0 (greedy) or more",
    )
    bad(
        a.paraphrases > 1 and a.paraphrase_temperature == 0,
        f"data.augment.paraphrases: {a.paraphrases} copies need sampling (greedy decoding writes one paraphrase): "
        f"set data.augment.paraphrase_temperature, e.g. 0.7, or paraphrases: 1",
    )
    bad(not a.paraphrase_instruction.strip(), "data.augment.paraphrase_instruction: must not be empty")
    try:
        compile_filter(cfg.data.filter)
    except ConfigError as e:
        problems += e.problems
    for key in cfg.data.columns:
        bad(
            key not in CANONICAL_FIELDS,
            f"data.columns: {key!r} is not a field edgeft reads; map to one of {', '.join(CANONICAL_FIELDS)}",
        )


def _check_train(cfg: Config, bad: Bad, problems: list[str]) -> None:
    t = cfg.train
    for key, minimum in (
        ("lora_r", 1),
        ("lora_alpha", 1),
        ("batch_size", 1),
        ("gradient_accumulation", 1),
        ("max_seq_length", 16),
        ("logging_steps", 1),
        ("eval_steps", 0),
        ("save_total_limit", 1),
        ("early_stopping_patience", 0),
    ):
        bad(getattr(t, key) < minimum, f"train.{key}: {getattr(t, key)} must be at least {minimum}")
    bad(not 0 <= t.lora_dropout < 1, f"train.lora_dropout: {t.lora_dropout} must be in [0, 1)")
    bad(
        not 0 <= t.warmup_ratio < 1,
        f"train.warmup_ratio: {t.warmup_ratio} must be in [0, 1) (a share of the steps)",
    )
    bad(t.weight_decay < 0, f"train.weight_decay: {t.weight_decay} must not be negative")
    bad(
        t.early_stopping_threshold < 0,
        f"train.early_stopping_threshold: {t.early_stopping_threshold} must not be negative",
    )
    bad(
        t.learning_rate is not None and t.learning_rate <= 0,
        f"train.learning_rate: {t.learning_rate} must be positive",
    )
    bad(
        t.method == "full" and t.quantization != "none",
        f"train.quantization: {t.quantization} trains an adapter on a 4-bit base (qlora); train.method full "
        f"updates every weight, in the compute dtype: remove train.quantization or use method qlora",
    )
    bad(t.method == "full" and t.dora, "train.dora: DoRA is a kind of adapter; train.method full has none")
    bad(
        t.method == "full" and cfg.export.gguf.lora,
        "export.gguf.lora: train.method full trains no adapter to export; set export.gguf.lora: false",
    )
    bad(
        t.dora and cfg.export.gguf.lora,
        "export.gguf.lora: llama.cpp's LoRA GGUF has no DoRA magnitude vectors; set export.gguf.lora: false "
        "(the merged model carries DoRA's effect) or train.dora: false",
    )
    bad(
        t.max_steps <= 0 and t.epochs <= 0,
        f"train.epochs: {t.epochs:g} trains nothing: give a positive number of epochs, or train.max_steps",
    )
    if isinstance(t.target_modules, str):
        bad(
            t.target_modules != "all-linear",
            f"train.target_modules: {t.target_modules!r} must be 'all-linear' or a list of module names",
        )
    else:
        bad(
            not t.target_modules or not all(m.strip() for m in t.target_modules),
            "train.target_modules: give module names (e.g. [q_proj, v_proj]) or 'all-linear'",
        )


def _check_align(cfg: Config, bad: Bad, problems: list[str]) -> None:
    a = cfg.align
    if not a.pairs:
        changed = [f.name for f in dataclasses.fields(a) if getattr(a, f.name) != f.default]
        bad(
            bool(changed),
            f"align.{changed[0] if changed else ''}: preference tuning is off without align.pairs "
            f"(a file of {{prompt, chosen, rejected}} rows): give it, or remove the align section",
        )
        return
    bad(not 0 < a.val_ratio < 1, f"align.val_ratio: {a.val_ratio} must be in (0, 1)")
    bad(a.beta <= 0, f"align.beta: {a.beta} must be positive (e.g. 0.1)")
    bad(
        a.learning_rate is not None and a.learning_rate <= 0,
        f"align.learning_rate: {a.learning_rate} must be positive",
    )
    bad(not 0 <= a.warmup_ratio < 1, f"align.warmup_ratio: {a.warmup_ratio} must be in [0, 1)")
    bad(
        a.max_steps <= 0 and a.epochs <= 0,
        f"align.epochs: {a.epochs:g} trains nothing: give a positive number of epochs, or align.max_steps",
    )
    for key, minimum in (
        ("batch_size", 1),
        ("gradient_accumulation", 1),
        ("logging_steps", 1),
        ("eval_steps", 0),
    ):
        bad(getattr(a, key) < minimum, f"align.{key}: {getattr(a, key)} must be at least {minimum}")
    bad(
        a.max_length is not None and a.max_length < 16,
        f"align.max_length: {a.max_length} must be at least 16",
    )
    for key, value, allowed in (
        ("align.method", a.method, ALIGN_METHODS),
        ("align.loss_type", a.loss_type, DPO_LOSSES),
        ("align.lr_scheduler", a.lr_scheduler, LR_SCHEDULERS),
    ):
        bad(value not in allowed, f"{key}: {value!r} is not one of {', '.join(allowed)}")


def _check_choices(cfg: Config, bad: Bad, problems: list[str]) -> None:
    t = cfg.train
    if t.method in ALIGN_METHODS:  # the objective, not the weights trained: its own stage after SFT
        problems.append(
            f"train.method: {t.method!r} is preference tuning, which runs after SFT in its own stage: keep "
            f"train.method ({', '.join(METHODS)}: the weights trained) and add align: {{pairs: FILE}}"
        )
        return
    for key, value, allowed in (
        ("train.method", t.method, METHODS),
        ("train.quantization", t.quantization, QUANTIZATIONS),
        ("train.compute_dtype", t.compute_dtype, COMPUTE_DTYPES),
        ("train.lr_scheduler", t.lr_scheduler, LR_SCHEDULERS),
        ("merge.strategy", cfg.merge.strategy, MERGE_STRATEGIES),
        ("merge.dtype", cfg.merge.dtype, MERGE_DTYPES),
        *(("export.gguf.types", v, GGUF_TYPES) for v in cfg.export.gguf.types),
        *(("export.onnx.types", v, ONNX_TYPES) for v in cfg.export.onnx.types),
    ):
        bad(value not in allowed, f"{key}: {value!r} is not one of {', '.join(allowed)}")


def _check_stages(cfg: Config, bad: Bad, problems: list[str]) -> None:
    """merge, export.onnx, verify and eval."""
    bad(
        cfg.merge.compare_prompts < 1,
        f"merge.compare_prompts: {cfg.merge.compare_prompts} must be at least 1",
    )
    bad(not 7 <= cfg.export.onnx.opset <= 23, f"export.onnx.opset: {cfg.export.onnx.opset} must be in 7-23")
    bad(cfg.verify.max_prompts < 1, "verify.max_prompts: must be at least 1")
    bad(cfg.verify.max_new_tokens < 1, "verify.max_new_tokens: must be at least 1")
    bad(
        cfg.verify.context_tokens < cfg.verify.max_new_tokens + 64,
        "verify.context_tokens: must leave room for a prompt: at least verify.max_new_tokens + 64",
    )
    bad(cfg.eval.max_examples < 1, "eval.max_examples: must be at least 1")
    bad(cfg.eval.max_new_tokens < 1, "eval.max_new_tokens: must be at least 1")
    bad(
        not 0 <= cfg.eval.forgetting_tolerance <= 1,
        f"eval.forgetting_tolerance: {cfg.eval.forgetting_tolerance} must be in [0, 1] (a share of the base's chrF)",
    )
    bad(not 0 < cfg.eval.min_relative <= 1, f"eval.min_relative: {cfg.eval.min_relative} must be in (0, 1]")
    bad(
        not 0 < cfg.eval.alpha < 1,
        f"eval.alpha: {cfg.eval.alpha} must be in (0, 1) (a significance level, e.g. 0.05)",
    )
    bad(cfg.eval.min_discordant < 1, f"eval.min_discordant: {cfg.eval.min_discordant} must be 1 or more")
    bad(
        sum(map(bool, (cfg.eval.json, cfg.eval.json_schema, cfg.eval.regex))) > 1,
        "eval: give at most one of json, json_schema and regex",
    )
    if cfg.eval.regex:
        try:
            re.compile(cfg.eval.regex)
        except re.error as e:
            problems.append(f"eval.regex: not a valid regular expression ({e})")


def _check_gguf(g: GGUFConfig, bad: Bad) -> None:
    needing = [t for t in g.types if t in formats.NEEDS_MATRIX]
    bad(
        g.imatrix == "none" and bool(needing),
        f"export.gguf.types: {', '.join(needing)} needs an importance matrix: set export.gguf.imatrix to auto "
        f"(computed on your training data) or a file made by llama-imatrix",
    )
    bad(
        g.imatrix_text is not None and g.imatrix != "auto",
        "export.gguf.imatrix_text: only used with export.gguf.imatrix: auto",
    )
    bad(
        g.imatrix_tokens < 1024,
        f"export.gguf.imatrix_tokens: {g.imatrix_tokens} must be at least 1024 (two chunks of 512 tokens)",
    )
    for type_, spec in g.tensor_types.items():
        where = f"export.gguf.tensor_types.{type_}"
        bad(type_ not in g.types, f"{where}: {type_!r} is not in export.gguf.types")
        if isinstance(spec, str):
            bad(
                spec != "fit",
                f"{where}: {spec!r} must be 'fit' or a mapping of tensor name pattern → ggml type",
            )
            continue
        for pattern, ggml in spec.items():
            try:
                re.compile(pattern)
            except re.error as e:
                bad(True, f"{where}: {pattern!r} is not a valid regular expression ({e})")
            bad(
                ggml not in formats.GGML_TENSOR_TYPES,
                f"{where}.{pattern}: {ggml!r} is not one of {', '.join(formats.GGML_TENSOR_TYPES)}",
            )


def parse_config(raw: Any, source: str = "") -> Config:
    problems: list[str] = []
    cfg = _build(Config, raw if raw is not None else {}, "", problems)
    if not problems:
        _check_values(cfg, problems)
    if problems:
        raise ConfigError(problems, source or None)
    train = _resolved_train(cfg.train)
    return dataclasses.replace(cfg, source=source, train=train, align=_resolved_align(cfg.align, train))


def _resolved_train(t: TrainConfig) -> TrainConfig:
    """The method's defaults made explicit, so that manifests record what was trained: qlora's
    4-bit type (nf4), a 4-bit type given with method lora (qlora), the learning rate."""
    method = "qlora" if t.method == "lora" and t.quantization != "none" else t.method
    quantization = "nf4" if method == "qlora" and t.quantization == "none" else t.quantization
    lr = t.learning_rate if t.learning_rate is not None else DEFAULT_LEARNING_RATE[method]
    return dataclasses.replace(t, method=method, quantization=quantization, learning_rate=lr)


def _resolved_align(a: AlignConfig, t: TrainConfig) -> AlignConfig:
    """align's defaults made explicit (the manifest records what was trained): the learning rate
    for the kind of weights train made, the length limit of the train section."""
    if not a.pairs:
        return a
    return dataclasses.replace(
        a,
        learning_rate=a.learning_rate
        if a.learning_rate is not None
        else DEFAULT_ALIGN_LEARNING_RATE[t.method],
        max_length=a.max_length if a.max_length is not None else t.max_seq_length,
    )


# A config is a few hundred values; YAML aliases let a few lines stand for billions of them
# ("billion laughs": 9 levels of 9 aliases), which every later step would expand (checking,
# hashing, the manifest, an error echoing a value). A config file may use aliases (`<<: *base`)
# up to this many values expanded; a --set value has no use for them and may not.
MAX_YAML_VALUES = 10_000


def read_yaml(text: str, where: str, aliases: bool = True) -> Any:
    """YAML text → data, refusing aliases (or, with `aliases`, more than MAX_YAML_VALUES values
    once they are expanded) before anything is built from it: a ConfigError naming `where`."""
    import yaml

    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _count_values(node, where, aliases)
        return loader.construct_document(node)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        raise ConfigError(
            f"not valid YAML ({getattr(e, 'problem', None) or str(e)[:200]})", f"{where}{line}"
        ) from None
    except RecursionError:
        raise ConfigError("not a readable config (nested too deeply)", where) from None
    finally:
        loader.dispose()


def _count_values(root: Any, where: str, aliases: bool) -> None:
    """How many values `root` stands for with every alias expanded, without expanding them (an
    aliased node is one object, counted once and reused)."""
    import yaml

    sizes: dict[int, int | None] = {}

    def size(node: Any) -> int:
        if id(node) in sizes:
            known = sizes[id(node)]
            if not aliases:
                raise ConfigError("a YAML alias (*name) is not allowed here: write the value out", where)
            if known is None:
                raise ConfigError(
                    "a YAML alias refers to a value that contains it: a config cannot be endless", where
                )
            return known
        sizes[id(node)] = None
        n = 1
        if isinstance(node, yaml.SequenceNode):
            n += sum(size(child) for child in node.value)
        elif isinstance(node, yaml.MappingNode):
            n += sum(size(k) + size(v) for k, v in node.value)
        sizes[id(node)] = n
        return n

    total = size(root)
    if total > MAX_YAML_VALUES:
        raise ConfigError(
            f"its YAML aliases expand to {total:,} values, more than any config needs "
            f"({MAX_YAML_VALUES:,}): write it without them",
            where,
        )


def parse_overrides(items: tuple[str, ...] | list[str]) -> dict[str, Any]:
    """`--set KEY=VALUE` items → {dotted key: value}; each value is YAML (without aliases)."""
    parsed: dict[str, Any] = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not eq:
            raise ConfigError(f"--set {shown(item)}: expected KEY=VALUE")
        if not key.strip():
            raise ConfigError(f"--set {shown(item)}: expected KEY=VALUE with a key such as train.max_steps")
        try:
            parsed[key.strip()] = read_yaml(value, "--set", aliases=False)
        except ConfigError as e:
            problem = e.problems[0]
            if problem.startswith("not valid YAML"):
                problem = f"the value is {problem}; quote it, e.g. --set 'name=\"a: b\"'"
            raise ConfigError(f"--set {shown(item)}: {problem}") from None
    return parsed


def load_config(path: Path | str, overrides: dict[str, Any] | None = None) -> Config:
    """Read and validate a YAML config; `overrides` are dotted keys (`train.max_steps`)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: config file not found")
    try:
        raw = read_yaml(path.read_text(encoding="utf-8"), str(path)) or {}
    except UnicodeDecodeError:
        raise ConfigError("not a readable config (not UTF-8 text)", str(path)) from None
    if not isinstance(raw, dict):
        raise ConfigError(
            f"expected a mapping of sections (name: …, base_model: …), got {type(raw).__name__}", str(path)
        )
    for dotted, value in (overrides or {}).items():
        node = raw
        *parents, last = dotted.split(".")
        for i, p in enumerate(parents):
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(
                    f"--set {dotted[:200]}: {'.'.join(parents[: i + 1])[:200]} is not a section"
                )
        if not last:
            raise ConfigError(f"--set {shown(dotted)}: expected KEY=VALUE with a key such as train.max_steps")
        node[last] = value
    return parse_config(raw, str(path.resolve()))
