"""Check family 1 and 2: token ids, the artifact's own chat template, and its special tokens."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from edgeft.pipeline.verify.checks import Checks
from edgeft.pipeline.verify.probes import Probe, Reference, common_prefix
from edgeft.runtimes import Runtime


def diagnose_ids(got: list[int], want: list[int], special: dict[str, Any], tokenizer: bool = True) -> str:
    """What a token-id difference means, when it is one of the known conversion faults
    (`tokenizer=False`: the ids come from different texts, so only BOS faults are meaningful)."""
    bos = special.get("bos")
    if bos is not None and got[:2] == [bos, bos] and want[:2] != [bos, bos]:
        return "BOS added twice"
    # Only where BOS is all that differs: a BOS that is also a chat token (SmolLM2's <|im_start|>)
    # can differ because that token is split, which is said below.
    if bos is not None and want[:1] == [bos] and got[:1] != [bos] and (got == want[1:] or not tokenizer):
        return "BOS missing"
    if bos is not None and got[:1] == [bos] and want[:1] != [bos] and (got[1:] == want or not tokenizer):
        return "BOS added where the reference has none"
    at = common_prefix(got, want)
    added = special.get("added", {})
    if tokenizer and at < len(want) and want[at] in added:
        return (
            f"the special token {added[want[at]]!r} (id {want[at]}) is split into ordinary tokens: it was lost "
            f"from the artifact's vocabulary or lost its special type"
        )
    return ""


# Differences of a runtime's tokenizer that are its own bug, with the smallest reproducer; verify
# names them and does not fail the artifact on them alone (they are in the report).
def _genai_non_decimal_digits(text: str) -> bool:
    return any(ord(c) > 127 and c.isnumeric() for c in text)


KNOWN_DEVIATIONS = {
    "onnxruntime-genai": (
        _genai_non_decimal_digits,
        "onnxruntime-genai 0.15.2's tokenizer does not split non-ASCII numeric characters (½ ² Ⅻ) off as a "
        "Digits pre-tokenizer must: ' ½' is [3351, 138] there, [216, 16738] in transformers and llama.cpp "
        "(SmolLM2); a runtime bug, not the folder's",
    ),
}


def _ids_check(
    checks: Checks,
    check: str,
    probes: list[Probe],
    idx: Sequence[int],
    texts: list[str],
    expected: list[list[int]],
    rt: Runtime,
    special: dict[str, Any],
    add_special: bool,
) -> None:
    bad = [
        (probes[i].name, rt.tokenize(texts[i], add_special=add_special), expected[i], texts[i]) for i in idx
    ]
    bad = [b for b in bad if b[1] != b[2]]
    known = KNOWN_DEVIATIONS.get(rt.name)
    if bad and known and all(known[0](b[3]) for b in bad):
        checks.add(
            check,
            True,
            f"{len(idx) - len(bad)}/{len(idx)} probes identical; {', '.join(b[0] for b in bad)}: "
            f"known deviation: {known[1]}",
            known_deviation=known[1],
        )
        return
    if bad:
        name, got, want, _ = bad[0]
        at = common_prefix(got, want)
        cause = diagnose_ids(got, want, special) or _typed_special(rt, got, want, at, special)
        checks.add(
            check,
            False,
            (f"{cause}: " if cause else "") + f"{len(bad)}/{len(idx)} probes tokenise "
            f"differently; first {name} at position {at}: got {got[at : at + 5]}, reference {want[at : at + 5]}",
        )
    else:
        checks.add(check, True, f"{len(idx)} probes identical")


def _typed_special(rt: Runtime, got: list[int], want: list[int], at: int, special: dict[str, Any]) -> str:
    """The cause when the artifact's vocabulary types a token so that its tokenizer takes the text
    out of user text whole, where the reference has no such token and splits the text."""
    if at >= len(got) or got[at] in special.get("added", {}):
        return ""
    typed = rt.special_type(got[at])
    if typed is None:
        return ""
    kind, text, by = typed
    return (
        f"{rt.name} reads {text!r} in user text as one token ({got[at]}), typed {kind} {by}, where the reference "
        f"splits it into ordinary tokens ({want[at : at + 3]}…): a user who types {text!r} sends the model a token "
        f"it never saw in that place"
    )


def _token(special: dict[str, Any], token: int | None) -> str:
    text = special.get("added", {}).get(token)
    return f"{token} ({text!r})" if text is not None else str(token)


def token_ids(rt: Runtime, ref: Reference, probes: list[Probe], checks: Checks) -> None:
    """Token ids of plain text and of the chat-rendered prompt (the reference's rendering, so only
    the tokenizer varies) are the reference's."""
    chat = [i for i, p in enumerate(probes) if p.messages is not None]
    _ids_check(
        checks,
        "tokens_plain",
        probes,
        range(len(probes)),
        [p.plain_text for p in probes],
        ref.plain_ids,
        rt,
        ref.special,
        True,
    )
    _ids_check(checks, "tokens_chat", probes, chat, ref.prompts, ref.prompt_ids, rt, ref.special, False)


def chat_template(rt: Runtime, ref: Reference, probes: list[Probe], checks: Checks) -> None:
    """The artifact's own template renders the reference's prompt for every conversation."""
    chat = [i for i, p in enumerate(probes) if p.messages is not None]
    try:
        rendered = {i: rt.chat_prompt(probes[i].conversation) for i in chat}
        diff = [i for i, r in rendered.items() if r != ref.prompts[i]]
        if diff:
            i = diff[0]
            at = common_prefix(rendered[i], ref.prompts[i])
            cause = diagnose_ids(
                rt.tokenize(rendered[i], add_special=False), ref.prompt_ids[i], ref.special, False
            )
            checks.add(
                "chat_template",
                False,
                (f"{cause}: " if cause else "the artifact's chat template renders a different prompt: ")
                + f"{probes[i].name}: rendered prompt differs at char {at}: "
                f"{rendered[i][at : at + 30]!r} vs reference {ref.prompts[i][at : at + 30]!r}",
            )
        else:
            checks.add("chat_template", True, f"renders the reference prompt ({len(chat)} conversations)")
    except Exception as e:  # a missing or unrenderable template is exactly what this check finds
        checks.add("chat_template", False, f"cannot render the artifact's chat template: {e}")


def special_tokens(rt: Runtime, ref: Reference, checks: Checks) -> None:
    """BOS and EOS are the reference's; the end-of-turn token and EOS stop generation."""
    special = rt.special_tokens()
    problems = []
    # The BOS that is put before a prompt, not the id a vocabulary names: a GGUF of Qwen says BOS is
    # <|endoftext|> where transformers says none, and neither adds one.
    bos, ref_bos = rt.bos_added(), ref.special["bos_added"]
    if bos != ref_bos:
        problems.append(f"BOS added: {_token(ref.special, bos)} vs reference {_token(ref.special, ref_bos)}")
    if special["eos"] != ref.special["eos"]:
        problems.append(
            f"EOS changed: {_token(ref.special, special['eos'])} vs reference "
            f"{_token(ref.special, ref.special['eos'])}"
        )
    if ref.end_of_turn is not None and ref.end_of_turn not in special["stop"]:
        problems.append(
            f"end-of-turn token {_token(ref.special, ref.end_of_turn)} is not a stop token "
            f"(stops: {special['stop']}): generation will run past the end of the answer"
        )
    if ref.special["eos"] is not None and ref.special["eos"] not in special["stop"]:
        problems.append(
            f"EOS {_token(ref.special, ref.special['eos'])} is not a stop token (stops: {special['stop']})"
        )
    checks.add(
        "special_tokens",
        not problems,
        "; ".join(problems) or "BOS, EOS and end-of-turn agree",
        bos=special["bos"],
        eos=special["eos"],
        stop=special["stop"],
    )
