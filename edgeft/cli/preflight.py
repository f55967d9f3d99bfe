"""Pre-flight: will every consumer load this base model? Asked of the pinned tools, not a list.

    edgeft check-model gemma3:270m            # a table, one row per consumer
    edgeft check-model tiny:micro -c edgeft.yaml   # exit 3 when a type the config asks for cannot be made

`edgeft build` runs it first, so an architecture a configured export cannot take is named in
seconds, before any training. Each answer comes from the tool itself:

- llama.cpp's converter: its own architecture table (`conversion.get_model_class`, the pinned
  source in vendor/), which convert_lora_to_gguf.py shares for the LoRA GGUF;
- llama.cpp's runtime (llama-cpp-python, and the Java kit's libllama, the same build): the
  vocabulary converted alone and loaded, which reads the architecture and the tokenizer;
- each GGUF type: its block size (gguf-py's table) against the widths the model's tensors have;
  llama.cpp stores a tensor a block cannot divide one size up;
- optimum-onnx: its exporter registry for `text-generation-with-past` (ONNX with KV cache);
- onnxruntime-genai's model builder: the architectures its `create_model` dispatches on;
- the JavaScript Jinja engine (LM Studio, transformers.js): the chat template rendered there and
  in Python, which must agree;
- Ollama's `create`: not answered (Ollama is not part of the pinned stack; said so, not guessed).
"""

from __future__ import annotations

import json
import logging
import re
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from edgeft.core.config import Config
from edgeft.core.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Answer:
    consumer: str
    ok: bool | None  # None: not answered here (the detail says why)
    detail: str
    needed: bool = False  # the config asks for what this consumer makes
    caveat: bool = False  # yes, but not quite as asked (a type stored one size larger)


def _converter_class(arch: str) -> str | None:
    """The pinned llama.cpp converter's class for `arch`, or None where it has none."""
    from edgeft.core.paths import vendor_dir

    vendor = str(vendor_dir())
    if vendor not in sys.path:
        sys.path.insert(0, vendor)
    import conversion

    try:
        return conversion.get_model_class(arch).__name__
    except NotImplementedError:
        return None


def _llama_runtime(model_dir: Path) -> tuple[bool, str]:
    """Convert the vocabulary alone and load it in llama.cpp: the architecture and tokenizer it reads."""
    from edgeft.core.errors import EdgeftError
    from edgeft.pipeline.export.gguf import convert_vocab_only

    with tempfile.TemporaryDirectory() as work:
        out = Path(work) / "vocab.gguf"
        try:
            convert_vocab_only(model_dir, out)
        except EdgeftError as e:
            return False, f"the vocabulary does not convert: {str(e).splitlines()[-1]}"
        return _load_vocab(out)


def _load_vocab(path: Path) -> tuple[bool, str]:
    """Load a GGUF's vocabulary with the pinned libllama; what it said when it refused."""
    from edgeft.models import gguf_header
    from edgeft.models.vocab import VocabOnly

    arch = gguf_header.read(path).metadata.get("general.architecture", "?")
    with VocabOnly(path) as vocab:
        if vocab.model is None:
            return False, f"llama.cpp does not load {arch!r}: {vocab.refusal}"
        return True, f"loads as {arch!r} ({vocab.n_tokens:,} tokens)"


def _widths(config: dict[str, Any]) -> dict[int, str]:
    """The input widths of the model's weight matrices (what a quantization block must divide)."""
    hidden = config.get("hidden_size")
    heads, head_dim = config.get("num_attention_heads"), config.get("head_dim")
    widths = {hidden: "hidden size", config.get("intermediate_size"): "MLP width"}
    if heads and (head_dim or hidden):
        widths.setdefault(heads * (head_dim or hidden // heads), "attention output")
    return {w: what for w, what in widths.items() if isinstance(w, int) and w > 0}


def _block(gguf_type: str) -> int | None:
    """The block size of a GGUF file type's main tensor type (gguf-py's table)."""
    import gguf

    name = gguf_type.upper()
    for candidate in (name, re.sub(r"_(S|M|L|XS|XXS)$", "", name), re.sub(r"_M$", "_S", name)):
        if candidate in gguf.GGMLQuantizationType.__members__:
            return gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[candidate]][0]
    return None


def _gguf_types(types: list[str], config: dict[str, Any]) -> list[Answer]:
    widths = _widths(config)
    out = []
    for t in types:
        block = _block(t)
        odd = sorted((w, what) for w, what in widths.items() if block and w % block)
        if not odd:
            out.append(
                Answer(f"GGUF {t}", True, f"every width divides into blocks of {block or 1}", needed=True)
            )
        else:
            said = ", ".join(f"{w} ({what})" for w, what in odd)
            out.append(
                Answer(
                    f"GGUF {t}",
                    True,
                    f"tensors {said} wide do not divide into blocks of {block}: llama.cpp "
                    f"stores them one type larger (or export.gguf.tensor_types: {{{t}: fit}})",
                    needed=True,
                    caveat=True,
                )
            )
    return out


def _optimum(model_type: str) -> tuple[bool, str]:
    import optimum.exporters.onnx.model_configs  # noqa: F401  (registers optimum-onnx's exporters)
    from optimum.exporters.tasks import TasksManager

    try:
        tasks = TasksManager.get_supported_tasks_for_model_type(
            model_type, "onnx", library_name="transformers"
        )
    except (KeyError, ValueError):
        return False, f"optimum-onnx has no ONNX exporter for {model_type!r}"
    if "text-generation-with-past" not in tasks:
        return False, f"optimum-onnx exports {model_type!r} but not for generation with a KV cache"
    return True, f"text-generation-with-past ({model_type!r})"


def _genai_builder(arch: str) -> tuple[bool, str]:
    import inspect

    from onnxruntime_genai.models import builder

    known = set(re.findall(r'architectures\[0\] == "(\w+)"', inspect.getsource(builder.create_model)))
    if arch in known:
        return True, f"its builder dispatches {arch}"
    return False, f"its builder does not build {arch} (it builds {len(known)} architectures)"


def _js_template(model_dir: Path) -> Answer:
    from transformers import AutoTokenizer

    from edgeft.models.base import ensure_chat_template
    from edgeft.pipeline.verify import jsjinja

    tok = AutoTokenizer.from_pretrained(model_dir)
    chosen = ensure_chat_template(tok)
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Bye"},
    ]
    found = jsjinja.engine()
    if isinstance(found, str):
        return Answer("JS Jinja (LM Studio, transformers.js)", None, f"not checked: {found}")
    python = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    context = {
        "messages": messages,
        "add_generation_prompt": True,
        "bos_token": tok.bos_token or "",
        "eos_token": tok.eos_token or "",
    }
    got = jsjinja.render([{"template": tok.chat_template, "context": context}])[0]
    source = f"{chosen}" if chosen else "the model's own template"
    if "error" in got:
        return Answer(
            "JS Jinja (LM Studio, transformers.js)",
            False,
            f"{source}: the JS engine refuses it: {got['error']}",
        )
    if got["text"] != python:
        return Answer("JS Jinja (LM Studio, transformers.js)", False, f"{source}: renders differently in JS")
    return Answer(
        "JS Jinja (LM Studio, transformers.js)",
        True,
        f"{source.split(' (')[0]}: the same prompt in JS and Python",
    )


def check(model_dir: Path, cfg: Config | None = None, quick: bool = False) -> list[Answer]:
    """One answer per consumer for the model in `model_dir`; `needed` where `cfg` asks for it.
    `quick` (build's first step, about a second): the tools' own tables only, without loading the
    vocabulary in llama.cpp or rendering the template in JS."""
    config = json.loads((model_dir / "config.json").read_text())
    arch = (config.get("architectures") or ["?"])[0]
    model_type = config.get("model_type", "?")
    gguf_types = list(cfg.export.gguf.types) if cfg else []
    onnx_types = list(cfg.export.onnx.types) if cfg else []
    wants_gguf = cfg is None or bool(gguf_types) or bool(cfg.export.gguf.lora)
    answers = []
    cls = _converter_class(arch)
    answers.append(
        Answer(
            "llama.cpp converter",
            cls is not None,
            f"{arch} → {cls}" if cls else f"the pinned converter has no class for {arch}",
            wants_gguf,
        )
    )
    answers.append(
        Answer(
            "llama.cpp LoRA GGUF",
            cls is not None,
            "convert_lora_to_gguf.py shares the converter's classes",
            bool(cfg and cfg.export.gguf.lora),
        )
    )
    if cls is not None and not quick:
        ok, detail = _llama_runtime(model_dir)
        answers.append(Answer("llama.cpp runtime (llama-cpp-python, Java kit)", ok, detail, wants_gguf))
        if ok:
            answers += _gguf_types(gguf_types or ["q8_0", "q4_k_m"], config)
    ok, detail = _optimum(model_type)
    answers.append(Answer("optimum-onnx export", ok, detail, any(t != "int4" for t in onnx_types)))
    ok, detail = _genai_builder(arch)
    answers.append(Answer("onnxruntime-genai builder (int4)", ok, detail, "int4" in onnx_types))
    if quick:
        return answers
    answers.append(_js_template(model_dir))
    answers.append(
        Answer(
            "Ollama create",
            None,
            "not checked: Ollama is not part of edgeft's pinned stack; its "
            "architecture list is Ollama's, not llama.cpp's",
        )
    )
    return answers


def table(answers: list[Answer]) -> str:
    mark = {True: "yes", False: "NO", None: "?"}
    width = max(len(a.consumer) for a in answers)
    return "\n".join(f"{a.consumer:<{width}}  {mark[a.ok]:<3}  {a.detail}" for a in answers)


def require(answers: list[Answer]) -> None:
    """ConfigError (exit 3) naming each consumer the config needs that cannot take the model."""
    missing = [a for a in answers if a.needed and a.ok is False]
    if missing:
        raise ConfigError(
            "this base model cannot be exported as the config asks: "
            + "; ".join(f"{a.consumer}: {a.detail}" for a in missing)
            + " (remove those export types, or choose another base; "
            "`edgeft check-model` shows every consumer)"
        )


def as_json(answers: list[Answer]) -> list[dict[str, Any]]:
    return [asdict(a) for a in answers]
