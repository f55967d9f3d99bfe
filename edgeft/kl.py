"""KL divergence between next-token distributions: verify (artifact vs reference) and merge (strategy vs trained)."""

from __future__ import annotations

import numpy as np


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def kl_stats(ref: np.ndarray, other: np.ndarray) -> dict[str, np.ndarray]:
    """Per-position KL(ref || other), top-1 agreement and max |Δlogit| from two [T, V] logit arrays."""
    lp, lq = log_softmax(ref), log_softmax(other)
    kl = (np.exp(lp) * (lp - lq)).sum(axis=-1)
    return {
        "kl": np.maximum(kl, 0.0),
        "top1": (ref.argmax(-1) == other.argmax(-1)).astype(np.float64),
        "dlogit": np.abs(ref.astype(np.float64) - other).max(axis=-1),
    }


def summarise(per_sequence: list[dict[str, np.ndarray]]) -> dict[str, float]:
    """Mean, p99 and max KL, top-1 agreement and max |Δlogit| over all positions of all sequences."""
    kl = np.concatenate([s["kl"] for s in per_sequence])
    return {
        "kl_mean": float(kl.mean()),
        "kl_p99": float(np.quantile(kl, 0.99)),
        "kl_max": float(kl.max()),
        "top1": float(np.concatenate([s["top1"] for s in per_sequence]).mean()),
        "max_dlogit": float(max(s["dlogit"].max() for s in per_sequence)),
        "positions": int(kl.size),
    }
