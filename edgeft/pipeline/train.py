"""Fine-tune with trl's SFTTrainer on the base's chat template: a LoRA adapter through peft (on a
4-bit base for QLoRA; DoRA with train.dora), or every weight (train.method: full).

Consumes the config's `base_model`, `data` and `train` sections; produces a `train` stage
directory: `adapter/` (the best adapter by validation loss, its config, and the tokenizer with
the chat template used in training) or, for a full fine-tune, `model/` (the whole model, the
same way), the train/validation splits, `metrics.jsonl` (every
log line of the trainer, written as training goes) and `reports/loss.png`; the manifest holds
the base model's and the adapter's validation loss.

Work happens in `<workdir>/<name>/.train.partial/`, with checkpoints at each evaluation, so
a run killed at any moment continues with `--resume`. Under `accelerate launch` the same
command trains data-parallel; only the main process writes the stage.

    edgeft train -c examples/nl2sql/edgeft.yaml
    accelerate launch --num_processes 2 -m edgeft train -c examples/nl2sql/edgeft.yaml
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from edgeft.core import formats, stages
from edgeft.core.config import Config
from edgeft.core.errors import ConfigError, InputError, ToolError, no_space
from edgeft.core.fileio import hash_json
from edgeft.core.manifest import Stage, StageWriter, partial_dir
from edgeft.core.workdir import session
from edgeft.data.check import analyse_config, data_files, paraphraser
from edgeft.data.rows import file_hash, write_jsonl
from edgeft.data.tools import FORMAT as TOOL_FORMAT
from edgeft.models.base import compute_dtype, ensure_chat_template, fingerprint, load_base, resolve_base

log = logging.getLogger(__name__)


def inputs_hash(cfg: Config, upstream: Sequence[Stage] = ()) -> str:
    """Base (by content), data files (by content) and the data and train sections (training is
    the first stage: nothing upstream). Resolving the base refuses a bad one."""
    return _inputs_hash(cfg, resolve_base(cfg.base_model, cfg.root, cfg.trust_remote_code))


def _inputs_hash(cfg: Config, resolved: str) -> str:
    inputs = {
        "base": fingerprint(cfg.base_model, resolved),
        "data": cfg.section("data") | {"files": [file_hash(p) for p in data_files(cfg) if p.exists()]},
        "train": cfg.section("train"),
    }
    model = paraphraser(cfg)
    if model is not None and model[0] != cfg.base_model:
        inputs["paraphrase_model"] = fingerprint(*model)  # its rewrites are training data
    return hash_json(inputs)


def weight_names(model_dir: Path) -> list[str]:
    """Tensor names from the safetensors headers of a model directory (no weights are read)."""
    from safetensors import safe_open

    names: list[str] = []
    for f in sorted(Path(model_dir).glob("*.safetensors")):
        with safe_open(f, framework="np") as st:
            names += st.keys()
    return names


def check_target_modules(cfg: Config, base: str) -> None:
    """train.target_modules must name modules of the base (peft matches a name or its last
    parts); checked on the weight names before the model is loaded."""
    wanted = cfg.train.target_modules
    if isinstance(wanted, str):
        return
    modules = {n.rsplit(".", 1)[0] for n in weight_names(Path(base)) if n.endswith(".weight")}
    missing = [m for m in wanted if not any(x == m or x.endswith("." + m) for x in modules)]
    if missing:
        leaves = sorted(
            {
                m.rsplit(".", 1)[-1]
                for m in modules
                if m.split(".")[-1] not in ("embed_tokens", "lm_head") and "norm" not in m.split(".")[-1]
            }
        )
        raise ConfigError(
            f"train.target_modules: {', '.join(map(repr, missing))} is not a module of the base model; "
            f"its layers are {', '.join(leaves[:20])} (or use 'all-linear')"
        )


def check_packing_keeps_examples_apart(model) -> None:
    """train.packing concatenates examples into one row with position ids restarting at each
    (trl's padding-free 'bfd' packing, no attention mask). The attention must then keep them
    apart: FlashAttention does, and transformers builds a block-diagonal mask from the position
    ids for models on its masking utilities. Measured, not assumed: the second of two packed
    sequences must give the logits it gives alone."""
    import torch

    vocab = model.config.vocab_size
    g = torch.Generator().manual_seed(0)
    a, b = (torch.randint(5, vocab, (1, 12), generator=g) for _ in range(2))
    packed = torch.cat([a, b], dim=1)
    positions = torch.cat([torch.arange(12), torch.arange(12)])[None]
    was_training = model.training
    model.eval()
    with torch.no_grad():
        together = model(input_ids=packed, position_ids=positions, use_cache=False).logits[0, 12:].float()
        alone = model(input_ids=b, position_ids=positions[:, :12], use_cache=False).logits[0].float()
    model.train(was_training)
    # Same tokens, same positions: only attention across the boundary can move the logits by
    # more than kernel rounding (1e-2 of the logit scale even in bf16).
    scale = max(1.0, float(alone.abs().max()))
    if float((together - alone).abs().max()) > 1e-2 * scale:
        raise ConfigError(
            f"train.packing: this model's attention ({model.config._attn_implementation}) lets packed examples "
            f"attend to each other: set packing: false, or use an attention implementation that keeps them apart "
            f"(FlashAttention 2 on a GPU)"
        )


def describe_weights(model) -> dict[str, Any]:
    """How the base's linear layers are held in memory (proof that QLoRA really ran in 4-bit)."""
    counts: dict[str, int] = {}
    for module in model.modules():
        if type(module).__name__ in ("Linear", "Linear4bit", "Linear8bitLt"):
            counts[type(module).__name__] = counts.get(type(module).__name__, 0) + 1
    return {"dtype": str(next(model.parameters()).dtype).replace("torch.", ""), "layers": counts}


def device_args(t: Any) -> dict[str, Any]:
    """Where a trainer runs and in what precision: the CPU in float32, or the GPU with mixed
    precision in train.compute_dtype (the SFT and the DPO trainer alike)."""
    import torch

    on_gpu = torch.cuda.is_available()
    dtype = compute_dtype(t.compute_dtype)
    return {
        "use_cpu": not on_gpu,
        "bf16": on_gpu and dtype == torch.bfloat16,
        "fp16": on_gpu and dtype == torch.float16,
    }


def sft_config(cfg: Config, output_dir: Path):
    """trl's SFTConfig from the train section: edgeft's defaults, evaluation and checkpoints."""
    from trl import SFTConfig

    t = cfg.train
    every = (
        {
            "eval_strategy": "steps",
            "eval_steps": t.eval_steps,
            "save_strategy": "steps",
            "save_steps": t.eval_steps,
        }
        if t.eval_steps > 0
        else {"eval_strategy": "epoch", "save_strategy": "epoch"}
    )
    return SFTConfig(
        output_dir=str(output_dir),
        per_device_train_batch_size=t.batch_size,
        per_device_eval_batch_size=t.batch_size,
        gradient_accumulation_steps=t.gradient_accumulation,
        learning_rate=t.learning_rate,
        lr_scheduler_type=t.lr_scheduler,
        warmup_ratio=t.warmup_ratio,
        weight_decay=t.weight_decay,
        num_train_epochs=t.epochs,
        max_steps=t.max_steps,
        max_length=t.max_seq_length,
        # edgeft masks the loss itself (edgeft.data.loss_mask), with any chat template: trl's own
        # assistant-only loss needs `{% generation %}` markers that real templates lack.
        assistant_only_loss=False,
        packing=t.packing,
        # Best-fit packing, padding-free: position ids restart at each example and no attention
        # mask is passed, which is what keeps packed examples apart (check_packing_keeps_examples_apart).
        packing_strategy="bfd",
        gradient_checkpointing=t.gradient_checkpointing,
        seed=t.seed,
        data_seed=t.seed,
        logging_steps=t.logging_steps,
        **every,
        # The best checkpoint by validation loss becomes the adapter; the others are for resume.
        load_best_model_at_end=True,
        metric_for_best_model="eval_loss",
        greater_is_better=False,
        save_total_limit=t.save_total_limit,
        save_only_model=False,  # optimizer, scheduler and RNG state too: resume continues exactly
        report_to=[],
        **device_args(t),
        dataloader_num_workers=0,
        pad_to_multiple_of=None,
        ddp_find_unused_parameters=False,
    )


def trained_tools(rows: list) -> list[dict[str, Any]]:
    """Every distinct tool definition of the training rows, in the order first seen."""
    seen: dict[str, dict[str, Any]] = {}
    for e in rows:
        for fn in (e.tools or {}).values():
            seen.setdefault(json.dumps(fn, sort_keys=True), fn)
    return list(seen.values())


def training_rows(
    train_rows: list, val_rows: list, tokenizer: Any, assistant_only: bool
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], str]:
    """The rows trl trains and evaluates on, and what the loss covers. Chat rows with
    assistant-only loss are tokenised here with their loss masks (edgeft.data.loss_mask); a template
    that cannot be masked falls back to the whole sequence, with a warning."""
    from edgeft.data.loss_mask import tokenize_for_training

    def row(e: Any) -> dict[str, Any]:
        # Tool rows are already rendered (edgeft.data.tools): trl gets their messages without a
        # `tools` column, which it would hand to a template that renders tools itself.
        return {"messages": e.messages} if e.is_chat else e.to_json()

    plain = ([row(e) for e in train_rows], [row(e) for e in val_rows])
    if not train_rows[0].is_chat:
        return *plain, "whole text (text rows)"
    if not assistant_only:
        return *plain, "whole conversation (train.assistant_only_loss: false)"
    rows, why = tokenize_for_training([e.messages for e in train_rows + val_rows], tokenizer)
    if why:
        log.warning("train.assistant_only_loss: %s; training on the whole conversation instead", why)
        return *plain, f"whole conversation (the chat template cannot be masked: {why})"
    return rows[: len(train_rows)], rows[len(train_rows) :], "assistant turns and their end-of-turn token"


def last_checkpoint(checkpoints: Path) -> Path | None:
    """The newest complete checkpoint: trainer_state.json is written last, so it marks completeness."""
    done = []
    for d in checkpoints.glob("checkpoint-*"):
        try:
            json.loads((d / "trainer_state.json").read_text())
            done.append((int(d.name.split("-")[1]), d))
        except (OSError, ValueError):
            continue  # killed while saving: older checkpoints are still good
    return max(done)[1] if done else None


def metrics_callback(path: Path):
    """A trainer callback appending each log line to metrics.jsonl as training goes, and asking
    for a log line at every checkpoint and at the last step: the logged losses then cover every
    step exactly once, whether or not the run was resumed (see `train_loss`)."""
    from transformers import IntervalStrategy, TrainerCallback

    class MetricsFile(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            saving = args.save_strategy == IntervalStrategy.STEPS and state.global_step % args.save_steps == 0
            if saving or state.global_step >= state.max_steps:
                control.should_log = True

        def on_epoch_end(self, args, state, control, **kwargs):
            if args.save_strategy == IntervalStrategy.EPOCH:
                control.should_log = True

        def on_log(self, args, state, control, logs=None, **kwargs):
            if state.is_world_process_zero and logs:
                with path.open("a") as f:
                    f.write(json.dumps({"step": state.global_step, **logs}) + "\n")

    return MetricsFile()


def peak_resident_bytes() -> int:
    """This process's peak resident memory (VmHWM: unlike ru_maxrss, not inherited from a process
    this one was exec'd from; ru_maxrss where /proc is not there)."""
    import resource

    try:
        status = Path("/proc/self/status").read_text().splitlines()
        return next(int(x.split()[1]) for x in status if x.startswith("VmHWM:")) * 1024
    except (OSError, StopIteration, ValueError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: kB


def peak_memory_mb() -> float:
    """Peak memory of training: the GPU's allocated peak, or on CPU the process's peak resident set
    (which includes what was loaded before training: the tokenizer, the data, the libraries)."""
    import torch

    if torch.cuda.is_available():
        return round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return round(peak_resident_bytes() / 2**20, 1)


def train_loss(log_history: list[dict[str, Any]]) -> float | None:
    """Mean training loss over every step, from the logged interval means weighted by their
    length. transformers' own `training_loss` divides only the resumed part's loss by all steps."""
    total, steps, last = 0.0, 0, 0
    for entry in log_history:
        if "loss" in entry and "step" in entry and entry["step"] > last:
            total += entry["loss"] * (entry["step"] - last)
            steps += entry["step"] - last
            last = entry["step"]
    return total / steps if steps else None


def plot_losses(log_history: list[dict[str, Any]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [(e["step"], e["loss"]) for e in log_history if "loss" in e and "step" in e]
    val = [(e["step"], e["eval_loss"]) for e in log_history if "eval_loss" in e and "step" in e]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    if train:
        ax.plot(*zip(*train, strict=True), label="training loss")
    if val:
        ax.plot(*zip(*val, strict=True), marker="o", label="validation loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title("edgeft train")
    ax.grid(alpha=0.3)
    ax.legend()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)


def interrupted_run(cfg: Config, out_dir: Path | None = None) -> bool:
    """Whether an interrupted run of these very inputs waits in `.train.partial` to be resumed."""
    partial = partial_dir(stages.directory(cfg, stages.TRAIN, out_dir))
    try:
        started = json.loads((partial / "run.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(started, dict) and started.get("inputs_hash") == inputs_hash(cfg)


def train_adapter(
    cfg: Config,
    out_dir: Path | None = None,
    *,
    force: bool = False,
    replace_own: bool = False,
    resume: bool = False,
) -> Stage | None:
    """Fine-tune a LoRA adapter; return the published stage (None on non-main processes).

    An existing train stage is replaced with `force`, or `replace_own` (build); `resume`
    continues the interrupted run in `.train.partial`."""
    import torch
    from accelerate import PartialState

    # One process, or one of `accelerate launch`'s. Without CUDA, cpu=True is what makes
    # accelerate join the launcher's process group (gloo) rather than run alone.
    state = PartialState(cpu=not torch.cuda.is_available())
    out_dir = stages.directory(cfg, stages.TRAIN, out_dir)
    work = session(out_dir.parent) if state.is_main_process else contextlib.nullcontext()
    with work:
        return _train(cfg, state, out_dir, force, replace_own, resume)


def _checked_data(cfg: Config, tokenizer: Any, state: Any) -> Any:
    """The data check's report of the config's data (errors raise; warnings are summarised once)."""
    with state.main_process_first():  # paraphrases are generated once, then read from edgeft's cache
        report = analyse_config(cfg, tokenizer)
    report.raise_on_errors()
    if state.is_main_process and report.warnings:
        from collections import Counter

        kinds = Counter(f.check for f in report.warnings)
        log.warning(
            "data: %d warning(s) (%s), e.g. %s; `edgeft data check` lists them",
            len(report.warnings),
            ", ".join(f"{k}: {n}" for k, n in kinds.items()),
            report.warnings[0],
        )
    return report


def _resume_point(w: StageWriter, expected: str, resume: bool) -> Path | None:
    """The checkpoint an interrupted run continues from (None: from the start), refusing one that
    was made from other inputs."""
    if not resume:
        return None
    started = json.loads((w.tmp / "run.json").read_text()) if (w.tmp / "run.json").exists() else {}
    if started.get("inputs_hash") != expected:
        raise InputError(
            f"{w.tmp}: the interrupted run had other inputs (config, data or base); "
            f"run without --resume to start again"
        )
    resume_from = last_checkpoint(w.tmp / "checkpoints")
    log.info("resuming from %s", resume_from or "the start (no complete checkpoint yet)")
    return resume_from


def _peft_config(t: Any) -> Any:
    """The LoRA (or DoRA) adapter's settings; None for a full fine-tune, where the trainer updates
    every weight of the model it is given."""
    from peft import LoraConfig

    if t.method == "full":
        return None
    return LoraConfig(
        r=t.lora_r,
        lora_alpha=t.lora_alpha,
        lora_dropout=t.lora_dropout,
        target_modules=t.target_modules,
        use_dora=t.dora,
        task_type="CAUSAL_LM",
    )


def _fit(trainer: Any, t: Any, resume_from: Path | None, checkpoints: Path) -> tuple[dict, Any, dict]:
    """The base's validation loss, the training run and the best checkpoint's validation loss."""
    from transformers import EarlyStoppingCallback

    # The trainer prints its log lines to stdout, which carries edgeft's data: send to stderr.
    with contextlib.redirect_stdout(sys.stderr):
        # LoRA's B matrices start at zero (DoRA's magnitudes at the weights' norms), and a full
        # fine-tune has not moved yet: before training the model *is* the base.
        base_eval = trainer.evaluate(metric_key_prefix="base")
        if t.early_stopping_patience > 0:
            # Added after the base evaluation, whose metrics are named base_* and which the
            # callback would report as "early stopping is disabled" (it only skips that call).
            trainer.add_callback(
                EarlyStoppingCallback(
                    early_stopping_patience=t.early_stopping_patience,
                    early_stopping_threshold=t.early_stopping_threshold,
                )
            )
        try:
            result = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
        except (RuntimeError, ValueError) as e:
            if no_space(e):
                raise
            raise ToolError(
                f"training failed: {e} (checkpoints kept in {checkpoints}; continue with --resume)"
            ) from e
        final_eval = trainer.evaluate()  # the best checkpoint, reloaded at the end
    return base_eval, result, final_eval


def _base_source(cfg: Config, base: str) -> str | None:
    """Where a base made from a GGUF came from (edgeft.models.realmodel), for the lineage."""
    source = Path(base) / "edgeft_source.json"
    if not source.is_file():
        return None
    g = json.loads(source.read_text()).get("gguf") or {}
    package = ", from the PyPI package " + cfg.base_model[5:] if cfg.base_model.startswith("gguf:") else ""
    return (
        f"dequantized from {g.get('file')} ({g.get('type', 'a quantized')} GGUF, sha256 {g.get('sha256')}"
        f"{package}): the fine-tune inherits that file's rounding"
    )


def _record(
    w: StageWriter,
    cfg: Config,
    trainer: Any,
    fit: tuple[dict, Any, dict],
    rows: tuple[int, int],
    resume_from: Path | None,
    trainable: int,
    processes: int,
) -> None:
    """The trained weights, the splits, the loss curve and the metrics, into the stage."""
    t = cfg.train
    base_eval, result, final_eval = fit
    history = trainer.state.log_history
    plot_losses(history, w.tmp / "reports" / "loss.png")
    if t.method == "full":
        w.add_artifact(
            "model", "model", formats.HF_SAFETENSORS, method="full", dtype=w.extra["base_loaded_as"]["dtype"]
        )
    else:
        w.add_artifact(
            "adapter", "adapter", formats.PEFT_LORA, method=t.method, quantization=t.quantization, dora=t.dora
        )
    w.add_artifact("train-split", "train.jsonl", formats.JSONL, rows=rows[0])
    w.add_artifact("validation-split", "validation.jsonl", formats.JSONL, rows=rows[1])
    w.add_artifact("metrics", "metrics.jsonl", formats.JSONL)
    w.add_artifact("loss-plot", "reports/loss.png", formats.PNG)
    mean_loss = train_loss(history)
    w.metrics.update(
        base_val_loss=round(base_eval["base_loss"], 5),
        val_loss=round(final_eval["eval_loss"], 5),
        val_losses=[round(e["eval_loss"], 5) for e in history if "eval_loss" in e],
        train_loss=round(mean_loss, 5) if mean_loss is not None else None,
        steps=result.global_step,
        planned_steps=trainer.state.max_steps,
        stopped_early=result.global_step < trainer.state.max_steps,
        best_checkpoint_step=trainer.state.best_global_step,
        train_seconds=round(result.metrics.get("train_runtime", 0.0), 2),
        resumed_from_step=int(resume_from.name.split("-")[1]) if resume_from else None,
        processes=processes,
        method=t.method,
        trainable_parameters=trainable,
        peak_memory_mb=peak_memory_mb(),
    )


def _train(
    cfg: Config, state: Any, out_dir: Path, force: bool, replace_own: bool, resume: bool
) -> Stage | None:
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import SFTTrainer

    base = resolve_base(cfg.base_model, cfg.root, cfg.trust_remote_code)
    check_target_modules(cfg, base)
    tokenizer = AutoTokenizer.from_pretrained(base, trust_remote_code=cfg.trust_remote_code)
    chosen = ensure_chat_template(tokenizer)
    if chosen and state.is_main_process:
        log.warning("base model %s has no chat template: using %s", cfg.base_model, chosen)
    report = _checked_data(cfg, tokenizer, state)
    train_rows, val_rows = report.train, report.validation
    t = cfg.train
    expected = _inputs_hash(cfg, base)
    with state.main_process_first():
        w = stages.writer(
            cfg,
            stages.TRAIN,
            out_dir,
            expected,
            None,
            force=force,
            replace_own=replace_own,
            resumable=True,
            resume=resume,
            is_main=state.is_main_process,
        )
    with w:
        checkpoints = w.tmp / "checkpoints"
        resume_from = _resume_point(w, expected, resume)
        if state.is_main_process:
            (w.tmp / "run.json").write_text(json.dumps({"inputs_hash": expected}))
            write_jsonl(w.tmp / "train.jsonl", train_rows)
            write_jsonl(w.tmp / "validation.jsonl", val_rows)
            if not resume:
                (w.tmp / "metrics.jsonl").unlink(missing_ok=True)
        model = load_base(base, cfg)
        if t.packing:
            check_packing_keeps_examples_apart(model)
        w.extra["base_loaded_as"] = describe_weights(model)
        train_set, val_set, loss_on = training_rows(train_rows, val_rows, tokenizer, t.assistant_only_loss)
        w.extra["loss_on"] = loss_on
        trainer = SFTTrainer(
            model=model,
            args=sft_config(cfg, checkpoints),
            train_dataset=Dataset.from_list(train_set),
            eval_dataset=Dataset.from_list(val_set),
            processing_class=tokenizer,
            peft_config=_peft_config(t),
            callbacks=[metrics_callback(w.tmp / "metrics.jsonl")],
        )
        trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
        fit = _fit(trainer, t, resume_from, checkpoints)
        if not state.is_main_process:
            return None
        weights = "model" if t.method == "full" else "adapter"
        trainer.model.save_pretrained(w.tmp / weights, safe_serialization=True)
        tokenizer.save_pretrained(w.tmp / weights)
        shutil.rmtree(checkpoints, ignore_errors=True)
        (w.tmp / "run.json").unlink()
        _record(
            w,
            cfg,
            trainer,
            fit,
            (len(train_rows), len(val_rows)),
            resume_from,
            trainable,
            state.num_processes,
        )
        w.dataset = report.to_dict() | {"findings": [f.to_dict() for f in report.warnings]}
        w.resolved_base = base
        # Which template the model was trained with, and why (in the metrics, so the dist's lineage has it too).
        w.extra["chat_template"] = w.metrics["chat_template"] = chosen or "the base model's"
        source = _base_source(cfg, base)
        if source is not None:
            w.extra["base_source"] = w.metrics["base_source"] = source
        if any(e.tools for e in train_rows):
            # Trained on tool rows: the format a consumer renders tools in and reads calls back from,
            # and every definition trained with (in the metrics, so the dist's lineage has them:
            # `edgeft serve` accepts `tools`, the Java kit ships the definitions as rendered).
            w.extra["tool_format"] = w.metrics["tool_format"] = TOOL_FORMAT
            w.metrics["tools"] = trained_tools(train_rows)
        stage = w.publish()
    log.info(
        "adapter written to %s (val loss %.4f, base %.4f)",
        stage.path,
        stage.metrics["val_loss"],
        stage.metrics["base_val_loss"],
    )
    return stage
