"""What verify asks every artifact: held-out probes, fixed edge cases, and the reference's answers."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgeft.runtimes import Messages, Runtime


@dataclass
class Probe:
    name: str
    messages: list[dict[str, str]] | None  # the prompt (everything before the answer); None for text
    answer: (
        str | None
    )  # the reference answer (for a text probe, the whole text); None: the reference's own reply
    edge: bool = False  # a fixed edge case: its logits are summarised apart from the validation probes

    @property
    def conversation(self) -> Messages:
        """The prompt of a chat probe (a text probe has none)."""
        if self.messages is None:
            raise ValueError(f"{self.name} is a text probe, not a conversation")
        return self.messages

    @property
    def plain_text(self) -> str:
        if self.messages is None:
            return self.answer or ""
        return self.messages[-1]["content"] + (" " + self.answer if self.answer else "")


def probes_from(rows: list[dict[str, Any]], n: int) -> list[Probe]:
    """Held-out probes from a validation split: conversations, or plain-text rows."""
    out = []
    for i, row in enumerate(rows[:n]):
        if "messages" in row:
            out.append(Probe(f"validation[{i}]", row["messages"][:-1], row["messages"][-1]["content"]))
        else:
            out.append(Probe(f"validation[{i}]", None, row["text"]))
    return out


# The fixed edge cases every chat artifact is probed with, each where conversions go wrong.
EDGE_CASES = {
    "edge:unicode": "Zähle die Einträge für „Café Œuvre“ — 日本語のテキスト, ελληνικά, emoji 🚀✓, ½ ≠ ∞.",
    "edge:spaces": "   leading and trailing spaces,  doubled  inside,\ta tab and a newline\n   ",
    "edge:special-text": "What do <|im_end|>, <s> and </s> mean when a user types them? <|im_start|>",
    "edge:empty": "",
}


def edge_probes(
    validation: list[Probe], prompt_tokens: Callable[[Messages], int], budget: int
) -> list[Probe]:
    """The edge cases as the last user turn of the first validation conversation (its system
    prompt kept), plus a prompt of just under `budget` tokens (the near-context probe).
    `prompt_tokens(messages)` is the length of the rendered chat prompt in tokens."""
    first = next((p for p in validation if p.messages), None)
    if first is None:  # a text dataset: no chat to probe
        return []
    head = first.conversation[:-1]

    def asking(text: str) -> list[dict[str, str]]:
        return [*head, {"role": "user", "content": text}]

    probes = [Probe(name, asking(text), None, edge=True) for name, text in EDGE_CASES.items()]
    # Near the context limit: validation questions, one per line, while the prompt fits.
    pool = [p.messages[-1]["content"] for p in validation if p.messages]
    lines: list[str] = []
    step = 1
    while True:  # doubling, then single lines: few renderings even for long contexts
        more = lines + [pool[(len(lines) + k) % len(pool)] for k in range(step)]
        if prompt_tokens(asking("\n".join(more))) <= budget:
            lines, step = more, step * 2
        elif step > 1:
            step = 1
        else:
            break
    if lines:
        n = prompt_tokens(asking("\n".join(lines)))
        probes.append(Probe(f"edge:near-context({n} tokens)", asking("\n".join(lines)), None, edge=True))
    return probes


def common_prefix(a: Sequence[Any], b: Sequence[Any]) -> int:
    """How many leading items two sequences share."""
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


@dataclass
class Reference:
    """What the fp32 reference says for each probe, computed once and reused per artifact."""

    prompts: list[str]
    prompt_ids: list[list[int]]
    full_ids: list[list[int]]
    plain_ids: list[list[int]]
    logits: list[np.ndarray]
    generations: list[tuple[list[int], bool]]
    special: dict[str, Any]
    end_of_turn: int | None
    stopped_on: list[int] = field(default_factory=list)  # the stop tokens the reference's replies ended with


def reference_outputs(ref: Runtime, probes: list[Probe], max_new_tokens: int, eot: int | None) -> Reference:
    """Prompts, generations and logits of the reference for every probe (batched)."""
    prompts: list[str] = []
    prompt_ids: list[list[int]] = []
    texts: list[list[int] | None] = []
    for p in probes:
        if p.messages is None:  # plain text: the first half is the prompt, the rest the answer
            full = ref.tokenize(p.answer or "")
            prompts.append("")
            prompt_ids.append(full[: max(1, len(full) // 2)])
            texts.append(full)
        else:
            prompts.append(ref.chat_prompt(p.conversation))
            prompt_ids.append(ref.tokenize(prompts[-1], add_special=False))
            texts.append(None)
    gens = ref.generate_many(prompt_ids, max_new_tokens)
    full_ids: list[list[int]] = []
    for p, ids, gen, text in zip(probes, prompt_ids, gens, texts, strict=True):
        if text is not None:
            full_ids.append(text)
            continue
        # The answer, or for an edge case the reference's own reply, then its stop token.
        answer = ref.tokenize(p.answer, add_special=False) if p.answer is not None else gen[0]
        stop = eot if p.answer is not None or gen[1] else None
        full_ids.append(ids + answer + ([stop] if stop is not None else []))
    plain_ids = [ref.tokenize(p.plain_text) for p in probes]
    stopped_on = sorted({t for t in getattr(ref, "stopped_on", []) if t is not None})
    special = {**ref.special_tokens(), "bos_added": ref.bos_added()}
    return Reference(
        prompts, prompt_ids, full_ids, plain_ids, ref.logits_many(full_ids), gens, special, eot, stopped_on
    )
