"""The base model: resolve `base_model` (hub id, directory, tiny:<size>[:<seed>], an offline real model
such as smollm2:135m-instruct), fingerprint it, and load it as training and merging need it
(4-bit for QLoRA, else the compute dtype; safetensors only).

Also the chat-template helpers every stage shares: the end-of-turn token, and the template
without the training-only `{% generation %}` markers (plain Jinja, as runtimes render it).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeft.errors import ConfigError, InputError, first_line
from edgeft.manifest import hash_json

if TYPE_CHECKING:
    from edgeft.config import Config

# What a base model directory must hold, and the files fetched for a hub id: configs, safetensors
# weights, tokenizer files. Never pickles (*.bin, *.pt): loading one can run arbitrary code.
HUB_FILES = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "*.tiktoken"]
PICKLED = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl")


def resolve_base(spec: str, root: Path | None = None, trust_remote_code: bool = False) -> str:
    """The local model directory `base_model` names: a directory, a tiny model (built on first
    use), or a hub id (its snapshot in the HF cache, fetched when online). Checked: config.json,
    safetensors weights, and no model code to run unless `trust_remote_code`."""
    if spec.startswith("tiny:"):
        from edgeft.tiny import SIZES, cached_tiny_model

        parts = spec.split(":")
        size = parts[1] if len(parts) > 1 else ""
        known = [*SIZES, *(f"{s}-bpe" for s in SIZES)]
        if size not in known or len(parts) > 3 or (len(parts) == 3 and not parts[2].isdigit()):
            raise ConfigError(
                f"base_model: {spec!r} is not tiny:<size>[:<seed>] with size one of {', '.join(known)}"
            )
        return str(cached_tiny_model(size, int(parts[2]) if len(parts) == 3 else 0))
    from edgeft.realmodel import REAL_MODELS, cached_real_model

    if spec in REAL_MODELS:
        return str(cached_real_model(spec))
    local = Path(spec).expanduser()
    if not local.is_absolute() and root is not None and (root / local).exists():
        local = root / local
    if not local.exists():
        if spec.startswith((".", "/", "~")) or spec.count("/") > 1:
            raise ConfigError(f"base_model: {spec!r} does not exist")
        local = _hub_snapshot(spec, trust_remote_code)
    check_model_dir(local, spec, trust_remote_code)
    return str(local.resolve())


def _hub_snapshot(spec: str, trust_remote_code: bool) -> Path:
    """The hub model's files in the local HF cache (downloaded when the hub can be reached)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError

    try:
        return Path(snapshot_download(spec, allow_patterns=HUB_FILES + (["*.py"] if trust_remote_code else [])))
    except HFValidationError:
        raise ConfigError(f"base_model: {spec!r} is neither a model directory nor a hub id (organization/name)") from None
    except Exception as e:  # offline, unknown repo, gated, network: the hub client raises many kinds
        raise InputError(f"base_model: {spec!r} is not a local directory and could not be fetched from the Hugging "
                         f"Face hub ({first_line(e)}); download it where the hub is reachable (`hf download {spec}`) "
                         f"or give a model directory") from None


def check_model_dir(model_dir: Path, spec: str, trust_remote_code: bool = False) -> None:
    """Refuse a base model edgeft would load unsafely or not at all, naming what to do."""
    if not (model_dir / "config.json").is_file():
        raise ConfigError(f"base_model: {model_dir} has no config.json (not an HF model directory)")
    if not any(model_dir.glob("*.safetensors")):
        pickled = sorted(p.name for pattern in PICKLED for p in model_dir.glob(pattern))
        if pickled:
            raise InputError(
                f"base_model: {model_dir} has only pickled weights ({', '.join(pickled[:3])}); edgeft loads "
                f"safetensors only, because loading a pickle can run code. Convert it once, where you trust the "
                f"file: python -c \"from transformers import AutoModelForCausalLM as M; "
                f"M.from_pretrained('{model_dir}').save_pretrained('{model_dir}-safetensors')\" and use that folder")
        raise InputError(f"base_model: {model_dir} has no *.safetensors weights")
    try:
        config = json.loads((model_dir / "config.json").read_text())
    except (OSError, ValueError) as e:
        raise InputError(f"{model_dir / 'config.json'}: not readable JSON ({e})") from None
    if not isinstance(config, dict):
        raise InputError(f"{model_dir / 'config.json'}: not an HF model config")
    from transformers import CONFIG_MAPPING

    model_type = config.get("model_type")
    if model_type not in CONFIG_MAPPING and not trust_remote_code:
        if config.get("auto_map"):
            raise ConfigError(f"base_model: {spec} ships its own model code (auto_map in config.json, model_type "
                              f"{model_type!r} is not built into transformers); edgeft runs a model's code only "
                              f"with trust_remote_code: true in the config (review that code first)")
        raise ConfigError(f"base_model: {spec} has model_type {model_type!r}, which this transformers does not know")


def fingerprint(spec: str, resolved: str) -> str:
    """Identify the base by content: its config and the sha256 of every file (cached per file by
    device, inode, size, mtime and ctime, so a rebuild re-reads nothing; ctime moves on any write,
    even one that restores the mtime)."""
    p = Path(resolved)
    if not p.is_dir():
        return hash_json({"id": spec})
    files = {f.name: cached_sha256(f) for f in sorted(p.iterdir()) if f.is_file()}
    return hash_json({"config": json.loads((p / "config.json").read_text()), "files": files})


def cached_sha256(path: Path) -> str:
    """sha256 of a file, remembered in the edgeft cache under its stat identity."""
    from edgeft.manifest import sha256_file
    from edgeft.paths import cache_dir

    st = path.stat()
    key = f"{path.resolve()}|{st.st_dev}|{st.st_ino}|{st.st_size}|{st.st_mtime_ns}|{st.st_ctime_ns}"
    store = cache_dir() / "sha256"
    entry = store / hashlib.sha256(key.encode()).hexdigest()
    try:
        return entry.read_text()
    except OSError:
        pass
    digest = sha256_file(path)
    try:
        store.mkdir(parents=True, exist_ok=True)
        tmp = entry.with_name(f".{entry.name}.{os.getpid()}")
        tmp.write_text(digest)
        tmp.replace(entry)
    except OSError:
        pass  # a read-only cache only costs time
    return digest


def compute_dtype(name: str) -> Any:
    import torch

    if name != "auto":
        return getattr(torch, name)
    if torch.cuda.is_available():
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def load_base(base: str, cfg: Config) -> Any:
    """The base model, in 4-bit for QLoRA, else in the compute dtype (safetensors only)."""
    import torch
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    t = cfg.train
    dtype = compute_dtype(t.compute_dtype)
    # safetensors only: a pickled checkpoint from a user path could run arbitrary code.
    kwargs: dict[str, Any] = {"trust_remote_code": cfg.trust_remote_code, "use_safetensors": True}
    if t.quantization != "none":
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type=t.quantization,
            bnb_4bit_use_double_quant=t.double_quant, bnb_4bit_compute_dtype=dtype,
        )
        if torch.cuda.is_available():
            from accelerate import PartialState

            kwargs["device_map"] = {"": PartialState().local_process_index}
        else:
            kwargs["device_map"] = {"": "cpu"}
    elif t.method == "full":
        # Every weight is updated: kept in float32 (the optimizer's small steps vanish in 16-bit
        # weights); on a GPU the trainer computes in the compute dtype under autocast.
        kwargs["dtype"] = torch.float32
    else:
        kwargs["dtype"] = dtype
    model = AutoModelForCausalLM.from_pretrained(base, **kwargs)
    if t.quantization != "none" and not torch.cuda.is_available():
        _keep_4bit_weights_trainable(model)
    return model


def _keep_4bit_weights_trainable(model) -> None:
    """Stop bitsandbytes repacking 4-bit weights for CPU inference during evaluation.

    bitsandbytes 0.50.2, on CPUs with AVX512-BF16, repacks a Linear4bit's weights the first time
    it runs in eval mode without gradients (our base-model evaluation before training) and from
    then on multiplies through `gemv_4bit`, which has no autograd kernel: gradients stop flowing
    through the frozen base layers, silently (torch only warns). Training must keep the
    differentiable path, so the repacking is switched off on every 4-bit layer.
    """
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False



# For a base model without a chat template (a pre-trained, not instruction-tuned, model): plain
# text turns, and the tokenizer's own EOS closes the assistant's turn, so no token has to be
# added to the vocabulary and generation stops where a base model already knows to stop.
DEFAULT_CHAT_TEMPLATE = (
    "{{ bos_token if bos_token else '' }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] + '\n\n' }}"
    "{% elif message['role'] == 'user' %}{{ '### User:\n' + message['content'] + '\n\n' }}"
    "{% else %}{{ '### Assistant:\n' }}"
    "{% generation %}{{ message['content'] + eos_token }}{% endgeneration %}{{ '\n\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '### Assistant:\n' }}{% endif %}"
)


def ensure_chat_template(tokenizer: Any) -> bool:
    """Give a template-less tokenizer edgeft's default template; True if it had to. The template
    is rendered once within bounds first (edgeft.template): it is code from the model's author."""
    from edgeft.template import guard

    if tokenizer.chat_template:
        templates = tokenizer.chat_template
        for template in templates.values() if isinstance(templates, dict) else [templates]:
            guard(template, source=f"base model {tokenizer.name_or_path}", special_tokens=special_tokens(tokenizer))
        return False
    if tokenizer.eos_token is None:
        raise ConfigError("base_model: the tokenizer has neither a chat template nor an EOS token; "
                          "give it a chat_template in tokenizer_config.json")
    tokenizer.chat_template = DEFAULT_CHAT_TEMPLATE
    return True


def special_tokens(tokenizer: Any) -> dict[str, str]:
    """The special-token strings an HF chat template may use (bos_token, eos_token, …)."""
    return {k: v for k, v in tokenizer.special_tokens_map.items() if isinstance(v, str)}


_GENERATION_TAG = re.compile(r"\{%-?\s*(end)?generation\s*-?%\}")


def plain_template(template: str) -> str:
    """The template without `{% generation %}` markers, which only transformers understands.

    The markers render to nothing, so the output is unchanged; plain Jinja (llama.cpp's
    Python bindings, other runtimes) rejects the unknown tag and would lose the template.
    """
    return _GENERATION_TAG.sub("", template)


def end_of_turn(tokenizer: Any) -> tuple[str, int] | None:
    """The special token the chat template closes an assistant turn with, if any."""
    sentinel = "XQZSENTINELZQX"
    convo = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": sentinel}]
    text = tokenizer.apply_chat_template(convo, tokenize=False)
    tail = text.split(sentinel, 1)[1]
    ids = tokenizer(tail, add_special_tokens=False)["input_ids"]
    if not ids:
        return None
    special = set(tokenizer.all_special_ids)
    if ids[0] in special:
        return tokenizer.convert_ids_to_tokens(ids[0]), ids[0]
    return None
