"""KL statistics (edgeft.judge.kl) and the 4-bit-grid test of dequantized weights (judge.filecheck)."""

from __future__ import annotations

import numpy as np
import pytest

from edgeft.judge.filecheck import _on_4bit_grid
from edgeft.judge.kl import kl_stats, log_softmax, summarise


def test_kl_of_identical_logits_is_zero_and_top1_one() -> None:
    logits = np.random.default_rng(0).normal(size=(7, 50)).astype(np.float32)
    s = kl_stats(logits, logits + 3.0)  # a constant shift is the same distribution
    assert np.allclose(s["kl"], 0, atol=1e-9)
    assert s["top1"].tolist() == [1.0] * 7
    assert np.allclose(s["dlogit"], 3.0, atol=1e-5)


def test_kl_matches_the_closed_form_of_two_coins() -> None:
    p, q = 0.9, 0.6
    ref = np.log(np.array([[p, 1 - p]]))
    other = np.log(np.array([[q, 1 - q]]))
    want = p * np.log(p / q) + (1 - p) * np.log((1 - p) / (1 - q))
    assert kl_stats(ref, other)["kl"][0] == pytest.approx(want, rel=1e-9)
    # KL is not symmetric: the reference's distribution weighs the log ratio.
    assert kl_stats(other, ref)["kl"][0] != pytest.approx(want, rel=1e-3)


def test_log_softmax_is_stable_for_huge_logits() -> None:
    out = log_softmax(np.array([[1e4, 1e4 - 1.0, -1e4]]))
    assert np.isfinite(out).all()
    assert np.exp(out).sum() == pytest.approx(1.0)


def test_summarise_pools_positions_of_every_sequence() -> None:
    a = {"kl": np.array([0.0, 1.0]), "top1": np.array([1.0, 0.0]), "dlogit": np.array([0.5, 2.0])}
    b = {"kl": np.linspace(0, 0.98, 99), "top1": np.ones(99), "dlogit": np.array([7.0] * 99)}
    s = summarise([a, b])
    assert s["positions"] == 101
    assert s["kl_max"] == 1.0
    assert s["kl_mean"] == pytest.approx((1.0 + np.linspace(0, 0.98, 99).sum()) / 101)
    assert s["top1"] == pytest.approx(100 / 101)
    assert s["max_dlogit"] == 7.0
    assert s["kl_mean"] < s["kl_p99"] <= s["kl_max"]


def test_4bit_grid_tells_dequantized_weights_from_float_ones() -> None:
    rng = np.random.default_rng(0)
    floats = rng.normal(size=(64, 64)).astype(np.float32)
    levels = rng.normal(size=(64, 16)).astype(np.float32)  # 16 values per block of 64: NF4-like
    on_grid = np.take_along_axis(levels, rng.integers(0, 16, size=(64, 64)), axis=1)
    assert _on_4bit_grid(on_grid) and not _on_4bit_grid(floats)
    assert not _on_4bit_grid(on_grid[:2])  # too few blocks to judge


def test_kl_counts_each_context_once_and_reference_ties_agree() -> None:
    """Probes that share a system prompt count its positions once; a flip between two tokens the
    reference holds within kl.TIE nats agrees, a flip beyond it does not; chunked like one pass."""
    import numpy as np

    from edgeft.judge import kl

    masks = kl.distinct_contexts([[1, 2, 3, 4], [1, 2, 5], [1, 2, 3, 4, 6], [7]])
    assert [m.tolist() for m in masks] == [[True] * 4, [False, False, True], [False] * 4 + [True], [True]]

    ref = np.log(np.array([[0.5, 0.498, 0.002], [0.6, 0.3, 0.1], [0.2, 0.7, 0.1]], dtype=np.float32))
    other = np.log(np.array([[0.49, 0.508, 0.002], [0.3, 0.6, 0.1], [0.2, 0.7, 0.1]], dtype=np.float32))
    stats = kl.kl_stats(ref, other)
    assert stats["top1"].tolist() == [1.0, 0.0, 1.0]  # a 0.4% tie, a real flip, the same token
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(2, 3 * kl.ROWS + 5, 50)).astype(np.float32)
    whole = kl.log_softmax(a), kl.log_softmax(b)
    expected = (np.exp(whole[0]) * (whole[0] - whole[1])).sum(-1)
    np.testing.assert_allclose(kl.kl_stats(a, b)["kl"], expected, rtol=1e-9)
    assert kl.only(kl.kl_stats(a, b), masks[1][:1].repeat(len(a)))["kl"].size == 0
