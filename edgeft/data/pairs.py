"""Preference pairs: read them in trl's formats, check them, split them, as the align stage uses them.

A row is one of trl's preference formats:

- explicit prompt, text: `{"prompt": "…", "chosen": "…", "rejected": "…"}` (the prompt becomes the
  user turn, each answer the assistant's reply);
- explicit prompt, conversational: `{"prompt": [messages], "chosen": [{"role": "assistant", …}],
  "rejected": [{"role": "assistant", …}]}`;
- implicit prompt: `{"chosen": [messages], "rejected": [messages]}`, two conversations that differ
  only in their last (assistant) turn.

A `system` field, or data.system_prompt, adds the system turn the SFT rows get. Every pair is
normalised to (prompt conversation, chosen answer, rejected answer) and written back in trl's
conversational form, which DPOTrainer renders with the model's chat template.

An `edgeft serve` log folder reads as pairs too (edgeft.data.served.pairs): a user's correction is
chosen over the answer it corrects, and of one prompt answered several times, the best-rated
answer over each one rated lower.

Checks, each a `Finding` at FILE:LINE: rows that are not pairs, chosen equal to rejected, exact
duplicates, a validation pair that is also a training pair, a held-out prompt of SFT's validation
split among the training pairs (eval would score what was trained), and pairs longer than
align.max_length under the model's template.

    edgeft data check pairs.jsonl
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeft.data.check import exact_duplicates
from edgeft.data.rows import (
    MIN_EXAMPLES,
    Conversation,
    Finding,
    Findings,
    _Bad,
    _chat_messages,
    _check_roles,
    file_hash,
    fill_system_prompt,
    read_rows,
)

PAIR_KEYS = ("prompt", "chosen", "rejected")


def _squash(text: str) -> str:
    return " ".join(text.split())


@dataclass
class Pair:
    where: str
    prompt: Conversation  # ends with the user turn the answers reply to
    chosen: str
    rejected: str

    def prompt_key(self) -> bytes:
        text = json.dumps([[m["role"], _squash(m["content"])] for m in self.prompt])
        return hashlib.blake2b(text.encode(), digest_size=16).digest()

    def key(self) -> bytes:
        text = json.dumps([self.prompt_key().hex(), _squash(self.chosen), _squash(self.rejected)])
        return hashlib.blake2b(text.encode(), digest_size=16).digest()

    def to_json(self) -> dict[str, Any]:
        """trl's conversational preference row."""
        return {
            "prompt": self.prompt,
            "chosen": [{"role": "assistant", "content": self.chosen}],
            "rejected": [{"role": "assistant", "content": self.rejected}],
        }

    @classmethod
    def from_json(cls, row: dict[str, Any], where: str = "") -> Pair:
        """A row written by `to_json` (a stage's own file)."""
        return cls(where, row["prompt"], row["chosen"][-1]["content"], row["rejected"][-1]["content"])


def _answer(value: Any, key: str) -> tuple[Conversation | None, str]:
    """(the conversation before the answer, or None if `value` is only the answer; the answer)."""
    if isinstance(value, str):
        if not value.strip():
            raise _Bad(f"{key!r} is empty or only whitespace", "empty")
        return None, value
    try:
        msgs = _chat_messages(value)
    except _Bad as bad:
        raise _Bad(f"{key!r}: {bad}", bad.check) from None
    if msgs[-1]["role"] != "assistant":
        raise _Bad(f"{key!r} must end with an 'assistant' message (the answer)", "roles")
    return (msgs[:-1] or None), msgs[-1]["content"]


def to_pair(row: Any, system_prompt: str | None = None) -> Pair:
    """One row → a Pair (raises _Bad naming what is wrong)."""
    if not isinstance(row, dict):
        raise _Bad(f"expected an object, got {type(row).__name__}")
    missing = [k for k in ("chosen", "rejected") if k not in row]
    if missing:
        keys = ", ".join(sorted(map(str, row))) or "none"
        raise _Bad(
            f"not a preference pair (keys: {keys}); give prompt, chosen and rejected "
            f"(text, or conversations as trl's preference datasets have them)"
        )
    before_c, chosen = _answer(row["chosen"], "chosen")
    before_r, rejected = _answer(row["rejected"], "rejected")
    prompt_value = row.get("prompt")
    if prompt_value is None:
        if before_c is None or before_r is None:
            raise _Bad("missing 'prompt' (or give chosen and rejected as whole conversations)")
        if before_c != before_r:
            raise _Bad(
                "chosen and rejected conversations differ before their last turn: give the shared 'prompt'"
            )
        prompt = before_c
    elif isinstance(prompt_value, str):
        if not prompt_value.strip():
            raise _Bad("'prompt' is empty or only whitespace", "empty")
        prompt = [{"role": "user", "content": prompt_value}]
    else:
        try:
            prompt = _chat_messages(prompt_value)
        except _Bad as bad:
            raise _Bad(f"'prompt': {bad}", bad.check) from None
    for before, key in ((before_c, "chosen"), (before_r, "rejected")):
        if before is not None and before != prompt:
            raise _Bad(f"{key!r} repeats a conversation that is not the 'prompt': give only the answer")
    system = row.get("system") if isinstance(row.get("system"), str) and row["system"].strip() else None
    if prompt[0]["role"] != "system":
        if system is None and system_prompt:
            system = fill_system_prompt(system_prompt, row)
        if system is not None:
            prompt = [{"role": "system", "content": system}, *prompt]
    problem = _check_roles([*prompt, {"role": "assistant", "content": chosen}])
    if problem:
        raise _Bad(problem, "roles")
    if _squash(chosen) == _squash(rejected):
        raise _Bad("chosen and rejected are the same answer: the pair teaches nothing", "same-answer")
    return Pair("", prompt, chosen, rejected)


@dataclass
class PairsReport(Findings):
    train: list[Pair] = field(default_factory=list)
    validation: list[Pair] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)
    noun = "preference pair"

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.info,
            "train_pairs": len(self.train),
            "validation_pairs": len(self.validation),
            "errors": len(self.errors),
            "warnings": len(self.warnings),
            "findings": [f.to_dict() for f in self.findings],
        }


def load_pairs(
    path: Path, system_prompt: str | None = None, counts: dict[str, int] | None = None
) -> tuple[list[Pair], list[Finding], int]:
    """(pairs, findings, rows read): unusable rows are error findings, never exceptions. An `edgeft
    serve` log folder is paired from its feedback (edgeft.data.served.pairs; `counts` gets what
    was paired and what was dropped)."""
    from edgeft.data import served

    pairs: list[Pair] = []
    findings: list[Finding] = []
    rows = 0
    source: Any = read_rows(Path(path))
    if served.is_log(Path(path)):
        source, paired = served.pairs(Path(path))
        if counts is not None:
            counts.update(paired)
    for where, row in source:
        rows += 1
        if isinstance(row, ValueError):
            findings.append(Finding("error", where, "json", str(row)))
            continue
        try:
            pair = to_pair(row, system_prompt)
        except _Bad as bad:
            findings.append(Finding("error", where, bad.check, str(bad)))
            continue
        pair.where = where
        pairs.append(pair)
    return pairs, findings, rows


def split_by_prompt(pairs: list[Pair], val_ratio: float, seed: int) -> tuple[list[Pair], list[Pair]]:
    """Deterministic split that keeps every pair of one prompt on the same side (a held-out prompt
    whose other pairs were trained on would overstate the held-out preference accuracy)."""
    groups: dict[bytes, list[int]] = {}
    for i, p in enumerate(pairs):
        groups.setdefault(p.prompt_key(), []).append(i)
    order = list(groups.values())
    random.Random(seed).shuffle(order)
    wanted = max(1, round(len(pairs) * val_ratio))
    held: set[int] = set()
    for members in order:
        if len(held) >= wanted or len(held) + len(members) >= len(pairs):
            break
        held.update(members)
    return [p for i, p in enumerate(pairs) if i not in held], [p for i, p in enumerate(pairs) if i in held]


def _leakage(train: list[Pair], validation: list[Pair], held_out: list[Conversation]) -> list[Finding]:
    """A validation pair that is also a training pair; a training pair whose prompt is one eval
    scores (SFT's held-out split): both would overstate what eval measures."""
    seen = {p.key(): p for p in train}
    out = [
        Finding(
            "error",
            v.where,
            "leakage",
            f"validation pair also in the training pairs ({seen[v.key()].where}): remove one",
        )
        for v in validation
        if v.key() in seen
    ]
    if held_out:
        scored = {Pair("", c[:-1], "", "").prompt_key() for c in held_out if len(c) > 1}
        out += [
            Finding(
                "error",
                p.where,
                "leakage",
                "its prompt is one of the held-out examples eval scores (the train stage's validation "
                "split): training on it would overstate eval; remove the pair or move the example",
            )
            for p in train
            if p.prompt_key() in scored
        ]
    return out


def _lengths(pairs: list[Pair], tokenizer: Any, max_length: int) -> tuple[list[Finding], dict[str, Any]]:
    """Prompt + longer answer, in tokens under the model's template (what DPOTrainer would cut)."""
    import numpy as np
    from jinja2.exceptions import TemplateError

    out: list[Finding] = []
    lengths: list[int] = []
    for p in pairs:
        try:
            n = max(
                len(
                    tokenizer.apply_chat_template(
                        [*p.prompt, {"role": "assistant", "content": a}], tokenize=True
                    )
                )
                for a in (p.chosen, p.rejected)
            )
        except TemplateError as err:
            out.append(
                Finding(
                    "error",
                    p.where,
                    "template",
                    f"the model's chat template refuses this conversation: {err}",
                )
            )
            continue
        lengths.append(n)
        if n > max_length:
            out.append(
                Finding(
                    "error",
                    p.where,
                    "too-long",
                    f"{n} tokens under the model's template, over align.max_length {max_length}: "
                    f"shorten it or raise the limit",
                )
            )
    arr = np.array(lengths or [0])
    return out, {"median": float(np.median(arr)), "max": int(arr.max())}


def analyse(
    path: Path,
    *,
    validation_path: Path | None = None,
    system_prompt: str | None = None,
    val_ratio: float = 0.1,
    seed: int = 0,
    tokenizer: Any = None,
    max_length: int | None = None,
    held_out: list[Conversation] | None = None,
) -> PairsReport:
    """Load, check and split preference pairs; every problem becomes a finding."""
    from_log: dict[str, int] = {}
    pairs, findings, rows = load_pairs(path, system_prompt, from_log)
    info: dict[str, Any] = {"pairs_file": str(path), "pairs_sha256": file_hash(path), "rows": rows}
    if from_log:
        info["from_served_log"] = from_log
    if len(pairs) < MIN_EXAMPLES:
        findings.append(
            Finding(
                "error", str(path), "too-few", f"{len(pairs)} usable pair(s); at least {MIN_EXAMPLES} needed"
            )
        )
    findings += exact_duplicates(pairs)
    if validation_path is not None:
        val, vfindings, _ = load_pairs(validation_path, system_prompt)
        findings += vfindings
        train = pairs
        info.update(validation_file=str(validation_path), validation_sha256=file_hash(validation_path))
        if not val:
            findings.append(Finding("error", str(validation_path), "too-few", "no usable validation pair"))
    else:
        train, val = split_by_prompt(pairs, val_ratio, seed) if len(pairs) > 1 else (pairs, [])
    findings += _leakage(train, val, held_out or [])
    report = PairsReport(train, val, findings, info)
    if tokenizer is not None and max_length:
        more, report.info["token_lengths"] = _lengths(train + val, tokenizer, max_length)
        report.findings += more
    return report


def write_pairs(path: Path, pairs: list[Pair]) -> None:
    with Path(path).open("w", encoding="utf-8") as f:
        for p in pairs:
            f.write(json.dumps(p.to_json(), ensure_ascii=False) + "\n")


def read_pairs(path: Path) -> list[Pair]:
    """The pairs of a split written by `write_pairs` (a stage's own, validated file)."""
    return [
        Pair.from_json(json.loads(line), f"{path}:{n}")
        for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1)
        if line
    ]
