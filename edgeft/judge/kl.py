"""KL divergence between next-token distributions: verify (artifact vs reference) and merge (strategy vs trained)."""

from __future__ import annotations

import numpy as np


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


# Positions per float64 pass: a 262k vocabulary (Gemma 3) makes one position 2 MiB, and a
# 1,000-token probe computed at once held ~10 GB of temporaries.
ROWS = 64


# Top-1 agreement counts a position where the two runtimes pick different tokens as agreeing when
# the reference itself gives both within this many nats (1%): a tie it would break by summation
# order. Measured on Gemma 3 270M f16: its only flip had a reference gap of 0.0018 nats (KL 6e-6).
TIE = 0.01


def kl_stats(ref: np.ndarray, other: np.ndarray) -> dict[str, np.ndarray]:
    """Per-position KL(ref || other), top-1 agreement (ties within `TIE` agree) and max |Δlogit|
    from two [T, V] logit arrays."""
    kl = np.empty(len(ref))
    dlogit = np.empty(len(ref))
    top1 = np.empty(len(ref))
    for start in range(0, len(ref), ROWS):
        a, b = ref[start : start + ROWS], other[start : start + ROWS]
        lp, lq = log_softmax(a), log_softmax(b)
        kl[start : start + ROWS] = (np.exp(lp) * (lp - lq)).sum(axis=-1)
        dlogit[start : start + ROWS] = np.abs(a.astype(np.float64) - b).max(axis=-1)
        rows = np.arange(len(a))
        gap = lp[rows, lp.argmax(-1)] - lp[rows, lq.argmax(-1)]
        top1[start : start + ROWS] = gap <= TIE
    return {"kl": np.maximum(kl, 0.0), "top1": top1, "dlogit": dlogit}


def distinct_contexts(sequences: list[list[int]]) -> list[np.ndarray]:
    """Per sequence, a mask of the positions whose context (the tokens up to and including it) no
    earlier sequence had. Probes share a system prompt: counted once per probe, one near-tie in it
    weighed like 16 independent flips."""
    masks = []
    for i, seq in enumerate(sequences):
        shared = 0
        for earlier in sequences[:i]:
            n = min(len(seq), len(earlier))
            a, b = np.asarray(seq[:n]), np.asarray(earlier[:n])
            differ = np.nonzero(a != b)[0]
            shared = max(shared, int(differ[0]) if differ.size else n)
        mask = np.ones(len(seq), dtype=bool)
        mask[:shared] = False
        masks.append(mask)
    return masks


def only(stats: dict[str, np.ndarray], mask: np.ndarray) -> dict[str, np.ndarray]:
    """`kl_stats` at the positions `mask` keeps."""
    return {k: v[mask] for k, v in stats.items()}


def summarise(per_sequence: list[dict[str, np.ndarray]]) -> dict[str, float]:
    """Mean, p99 and max KL, top-1 agreement and max |Δlogit| over all positions of all sequences."""
    kl = np.concatenate([s["kl"] for s in per_sequence])
    return {
        "kl_mean": float(kl.mean()),
        "kl_p99": float(np.quantile(kl, 0.99)),
        "kl_max": float(kl.max()),
        "top1": float(np.concatenate([s["top1"] for s in per_sequence]).mean()),
        "max_dlogit": float(np.concatenate([s["dlogit"] for s in per_sequence]).max()),
        "positions": int(kl.size),
    }
