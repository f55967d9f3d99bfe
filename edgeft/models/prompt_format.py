"""The chat prompt as plain string pieces, for consumers without a Jinja engine (the Java kit).

llama.cpp's C `llama_chat_apply_template` is not a Jinja engine but a matcher of known formats:
for SmolLM2 it drops the default system prompt the model was trained with, and edgeft's own
default template is not among its formats at all. So edgeft derives, from the model's own
template, the strings a prompt is made of:

    prompt = (system given ? start_system : start)
             + for each message: prefix[role] + content (stripped if trim) + suffix[role]
             + generation

by rendering conversations of sentinel contents and cutting at the sentinels. A format is only
used where it reproduces the template: `edgeft verify` renders every probe conversation both
ways and fails the artifact when they differ (check `prompt_format`). The dist ships it as
`java/prompt-format.properties` (java.util.Properties, so Java reads it without a JSON library).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Messages = list[dict[str, str]]
Render = Callable[[Messages, bool], str]  # (messages, add_generation_prompt) -> prompt
KEYS = (
    "trim",
    "start",
    "start_system",
    "system.prefix",
    "system.suffix",
    "user.prefix",
    "user.suffix",
    "assistant.prefix",
    "assistant.suffix",
    "generation",
)
_S = ["\x01EDGEFT-A\x01", "\x01EDGEFT-B\x01", "\x01EDGEFT-C\x01"]


class NoFormat(Exception):
    """The template cannot be described by fixed pieces (the message says where it breaks)."""


def _cut(text: str, sentinels: list[str]) -> list[str]:
    pieces = []
    for s in sentinels:
        if text.count(s) != 1:
            raise NoFormat("the template does not render each message's content exactly once")
        head, text = text.split(s)
        pieces.append(head)
    return pieces + [text]


def _minus_suffix(text: str, suffix: str, what: str) -> str:
    if not text.endswith(suffix):
        raise NoFormat(f"the template's {what} is not a fixed string")
    return text[: len(text) - len(suffix)]


def _minus_prefix(text: str, prefix: str, what: str) -> str:
    if not text.startswith(prefix):
        raise NoFormat(f"the template's {what} is not a fixed string")
    return text[len(prefix) :]


def derive(render: Render) -> dict[str, str]:
    """The pieces of the template `render` applies."""
    a, b, c = _S
    user, assistant, system = (
        {"role": r, "content": s} for r, s in (("user", a), ("assistant", b), ("system", c))
    )
    # [user]: start + user.prefix | user.suffix (+ generation)
    s0, user_suffix = _cut(render([user], False), [a])
    s0g, tail_g = _cut(render([user], True), [a])
    generation = _minus_prefix(tail_g, user_suffix, "generation prompt")
    # [user, assistant, user]: … | user.suffix + assistant.prefix | assistant.suffix + user.prefix | …
    second = {"role": "user", "content": _S[2]}
    head, ua, au, tail = _cut(render([user, assistant, second], False), [a, b, c])
    if head != s0 or tail != user_suffix:
        raise NoFormat("the template renders the first user turn differently in a longer conversation")
    assistant_prefix = _minus_prefix(ua, user_suffix, "assistant prefix")
    _, _, assistant_suffix = _cut(render([user, assistant], False), [a, b])
    user_prefix = _minus_prefix(au, assistant_suffix, "user prefix")
    start = _minus_suffix(s0, user_prefix, "start")
    # Templates that trim each message's content (Llama 3's `| trim`).
    spaced = render([{"role": "user", "content": f" {a} "}], False)
    trim = "true" if f" {a} " not in spaced and a in spaced else "false"
    fmt = {
        "trim": trim,
        "start": start,
        "user.prefix": user_prefix,
        "user.suffix": user_suffix,
        "assistant.prefix": assistant_prefix,
        "assistant.suffix": assistant_suffix,
        "generation": generation,
    }
    # [system, user]: start_system + system.prefix | system.suffix + user.prefix | …
    try:
        text = render([system, {"role": "user", "content": a}], False)
    except Exception:  # templates that refuse a system turn (Gemma, Mistral v0.1) raise from Jinja
        fmt.update({"start_system": "", "system.prefix": "", "system.suffix": "", "system": "unsupported"})
        return fmt
    before, between, _ = _cut(text, [c, a])
    fmt["system.suffix"] = _minus_suffix(between, user_prefix, "system suffix")
    # Where start ends and system.prefix begins cannot be told apart: start_system holds both.
    fmt.update({"start_system": before, "system.prefix": ""})
    return fmt


def render(fmt: dict[str, str], messages: Messages) -> str:
    """The prompt for `messages`, with the generation prompt, from the format's pieces."""
    if fmt.get("system") == "unsupported" and any(m["role"] == "system" for m in messages):
        raise NoFormat("the template refuses system turns")
    system_first = bool(messages) and messages[0]["role"] == "system"
    out = [fmt["start_system"] if system_first else fmt["start"]]
    for m in messages:
        content = m["content"].strip() if fmt.get("trim") == "true" else m["content"]
        out += [fmt[f"{m['role']}.prefix"], content, fmt[f"{m['role']}.suffix"]]
    return "".join(out) + fmt["generation"]


def from_tokenizer(tokenizer: Any) -> tuple[dict[str, str] | None, str | None]:
    """(format, None), or (None, why not) for an HF tokenizer's chat template."""

    def apply(messages: Messages, generation: bool) -> str:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation)

    try:
        return derive(apply), None
    except NoFormat as e:
        return None, str(e)
    except Exception as e:  # the template itself refused a sentinel conversation
        return None, f"the template cannot render a plain user/assistant conversation ({e})"


def to_properties(fmt: dict[str, str], header: str) -> str:
    """java.util.Properties text (ASCII, every non-ASCII character and control escaped)."""

    def esc(value: str) -> str:
        out = []
        for ch in value:
            if ch in "\\=:#!":
                out.append("\\" + ch)
            elif ch == "\n":
                out.append("\\n")
            elif ch == "\t":
                out.append("\\t")
            elif ch == "\r":
                out.append("\\r")
            elif ch == " ":
                out.append("\\ ")
            elif 32 <= ord(ch) < 127:
                out.append(ch)
            else:
                out += [f"\\u{u:04x}" for u in _utf16(ch)]
        return "".join(out)

    lines = [f"# {line}" for line in header.splitlines()]
    lines += [f"{k}={esc(fmt[k])}" for k in sorted(fmt)]
    return "\n".join(lines) + "\n"


def _utf16(ch: str) -> list[int]:
    b = ch.encode("utf-16-be")
    return [int.from_bytes(b[i : i + 2], "big") for i in range(0, len(b), 2)]


def from_properties(text: str) -> dict[str, str]:
    """Read back what `to_properties` wrote (keys without escapes; values with the escapes above)."""
    simple = {"n": "\n", "t": "\t", "r": "\r"}
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        key, _, value = line.partition("=")
        units, i = [], 0
        while i < len(value):
            ch = value[i]
            if ch == "\\" and i + 1 < len(value):
                nxt = value[i + 1]
                if nxt == "u":
                    units.append(int(value[i + 2 : i + 6], 16))
                    i += 6
                    continue
                units.append(ord(simple.get(nxt, nxt)))
                i += 2
                continue
            units.append(ord(ch))
            i += 1
        out[key] = b"".join(u.to_bytes(2, "big") for u in units).decode("utf-16-be")
    return out
