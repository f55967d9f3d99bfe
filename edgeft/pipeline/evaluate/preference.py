"""Preference parity: on the held-out preference pairs, how often each model prefers the chosen answer
over the rejected one by sequence log-probability — the base, the SFT model, the preference-tuned
model and every artifact, each in its own runtime on the *same token ids* (the reference
tokenizer's rendering of prompt + answer), so llama.cpp and ONNX Runtime are judged on exactly what
transformers scored.

A pair's score in a model is log p(answer | prompt) summed over the answer's tokens (its end-of-turn
token included), as DPO's implicit reward counts it. An artifact is compared with the tuned model
pair by pair with the gate's paired rule (edgeft.judge.paired.compare_binary): a quantized file that
loses the trained preference fails the evaluation, naming the artifact and the p-value.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from edgeft.core.errors import InputError
from edgeft.data.pairs import Pair
from edgeft.runtimes import Runtime

log = logging.getLogger(__name__)


def sequences(pairs: Sequence[Pair], tokenizer: Any) -> list[tuple[list[int], list[int], int]]:
    """Per pair: (prompt + chosen ids, prompt + rejected ids, prompt length), rendered by the
    reference's chat template. A template whose rendering of prompt + answer does not start with
    the prompt's rendering cannot be scored this way: an error naming the pair."""
    out = []
    for p in pairs:
        prompt = list(tokenizer.apply_chat_template(p.prompt, add_generation_prompt=True, tokenize=True))
        full = [
            list(
                tokenizer.apply_chat_template([*p.prompt, {"role": "assistant", "content": a}], tokenize=True)
            )
            for a in (p.chosen, p.rejected)
        ]
        for ids in full:
            if ids[: len(prompt)] != prompt or len(ids) == len(prompt):
                raise InputError(
                    f"{p.where}: the chat template renders prompt + answer without the prompt's own rendering "
                    f"in front: the answer's log-probability cannot be read off one sequence"
                )
        out.append((full[0], full[1], len(prompt)))
    return out


def answer_logprob(logits: np.ndarray, ids: list[int], start: int) -> float:
    """Sum of log p(ids[t] | ids[:t]) for t ≥ start, from next-token logits at every position."""
    rows = logits[start - 1 : len(ids) - 1].astype(np.float64)
    top = rows.max(axis=1, keepdims=True)
    logz = np.log(np.exp(rows - top).sum(axis=1)) + top[:, 0]
    picked = rows[np.arange(len(rows)), ids[start:]]
    return float((picked - logz).sum())


def score(
    rt: Runtime, seqs: Sequence[tuple[list[int], list[int], int]], label: str
) -> tuple[list[bool], list[float]]:
    """(prefers chosen, log-prob margin chosen − rejected) per pair, in runtime `rt`."""
    started = time.time()
    flat = [ids for c, r, _ in seqs for ids in (c, r)]
    logits = rt.logits_many(flat)
    prefers, margins = [], []
    for k, (c, r, n) in enumerate(seqs):
        margin = answer_logprob(logits[2 * k], c, n) - answer_logprob(logits[2 * k + 1], r, n)
        prefers.append(margin > 0)
        margins.append(margin)
    log.info("%s: %d preference pairs scored in %.1f s", label, len(seqs), time.time() - started)
    return prefers, margins


def summary(prefers: list[bool], margins: list[float]) -> dict[str, Any]:
    return {
        "accuracy": sum(prefers) / max(len(prefers), 1),
        "mean_margin": float(np.mean(margins)) if margins else 0.0,
        "right": "".join("01"[x] for x in prefers),
    }
