"""Which tokens of a conversation carry the training loss: the assistant's, with any chat template.

trl's assistant-only loss needs `{% generation %}` markers in the template, which almost no
real template has (SmolLM2, Llama 3, Qwen2, Mistral, Gemma, Phi-3). edgeft finds the
assistant's text by rendering: for each assistant turn, the conversation before it with the
generation prompt must be a prefix of the whole rendered conversation (a prefix-preserving
template), and the turn's content must follow it, closed by the end-of-turn token. The loss
then covers exactly the tokens of that content plus the end-of-turn token (so the model learns
to stop), found through the fast tokenizer's character offsets.

A template for which that does not hold (one that rewrites earlier turns, or does not close a
turn with a special token) cannot be masked this way: `masks` says why, and training falls back
to the whole sequence with a warning.
"""

from __future__ import annotations

from typing import Any

from edgeft.data.rows import Conversation


class Unmaskable(Exception):
    """The template does not let the assistant's tokens be told apart (the message says why)."""


def assistant_spans(
    messages: Conversation, tokenizer: Any, eot: str | None
) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character spans (start, end) that carry the loss."""
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prefix = tokenizer.apply_chat_template(messages[:i], tokenize=False, add_generation_prompt=True)
        if not text.startswith(prefix):
            raise Unmaskable(
                f"the template is not prefix-preserving: the conversation up to assistant turn {i} "
                f"with the generation prompt is not how the whole conversation begins"
            )
        rest = text[len(prefix) :]
        content = message["content"]
        if not rest.startswith(content):
            content = content.strip()  # templates that trim (Llama 3's `| trim`)
            if not rest.startswith(content):
                raise Unmaskable(
                    f"the template changes the content of assistant turn {i} (it does not follow "
                    f"the generation prompt as written)"
                )
        end = len(prefix) + len(content)
        if eot is None or not text.startswith(eot, end):
            raise Unmaskable(
                f"assistant turn {i} is not closed by an end-of-turn token right after its content "
                f"(found {text[end : end + 20]!r})"
            )
        spans.append((len(prefix), end + len(eot)))
    return text, spans


def masks(messages: Conversation, tokenizer: Any, eot: str | None) -> tuple[list[int], list[int]]:
    """(input_ids, mask) of a conversation: mask 1 on the assistant's content and end-of-turn tokens."""
    text, spans = assistant_spans(messages, tokenizer, eot)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    mask = [int(any(s < b and a < e for s, e in spans)) for a, b in enc["offset_mapping"]]
    if spans and not any(mask):
        raise Unmaskable("no token falls inside an assistant turn")
    return enc["input_ids"], mask


def tokenize_for_training(
    conversations: list[Conversation], tokenizer: Any
) -> tuple[list[dict[str, Any]], str | None]:
    """Pre-tokenised rows (input_ids, assistant_masks) for trl, or ([], reason) if the template
    cannot be masked (then the caller trains on the whole sequence)."""
    from edgeft.models.base import end_of_turn

    found = end_of_turn(tokenizer)
    eot = found[0] if found else None
    rows = []
    try:
        for messages in conversations:
            ids, mask = masks(messages, tokenizer, eot)
            rows.append({"input_ids": ids, "assistant_masks": mask})
    except Unmaskable as e:
        return [], str(e)
    return rows, None
