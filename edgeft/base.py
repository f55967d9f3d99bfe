"""The base model: resolve `base_model` (hub id, directory, tiny:<size>[:<seed>]) and fingerprint it.

Also the chat-template helpers every stage shares: the end-of-turn token, and the template
without the training-only `{% generation %}` markers (plain Jinja, as runtimes render it).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from edgeft.errors import ConfigError
from edgeft.manifest import hash_json


def resolve_base(spec: str, root: Path | None = None) -> str:
    """Return what `from_pretrained` should load: a directory path or a hub id."""
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
    local = Path(spec).expanduser()
    if not local.is_absolute() and root is not None and (root / local).exists():
        local = root / local
    if local.exists():
        if not (local / "config.json").is_file():
            raise ConfigError(f"base_model: {local} has no config.json (not an HF model directory)")
        return str(local.resolve())
    if spec.startswith((".", "/", "~")):
        raise ConfigError(f"base_model: {spec!r} does not exist")
    return spec  # a hub id: transformers resolves (and, offline, reports) it


def fingerprint(spec: str, resolved: str) -> str:
    """Identify the base cheaply: config and file sizes/mtimes for a directory, else the id."""
    p = Path(resolved)
    if not p.is_dir():
        return hash_json({"id": spec})
    files = {
        f.name: [f.stat().st_size, int(f.stat().st_mtime)] for f in sorted(p.iterdir()) if f.is_file()
    }
    return hash_json({"config": json.loads((p / "config.json").read_text()), "files": files})


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
    """Give a template-less tokenizer edgeft's default template; True if it had to."""
    if tokenizer.chat_template:
        return False
    if tokenizer.eos_token is None:
        from edgeft.errors import ConfigError

        raise ConfigError("base_model: the tokenizer has neither a chat template nor an EOS token; "
                          "give it a chat_template in tokenizer_config.json")
    tokenizer.chat_template = DEFAULT_CHAT_TEMPLATE
    return True


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
