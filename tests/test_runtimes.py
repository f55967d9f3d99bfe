"""The runtimes' shared pieces (edgeft.runtimes.base): sampling and where BOS goes."""

from __future__ import annotations

import numpy as np

from edgeft.runtimes import Sampling, sample

LOGITS = np.log(np.array([0.5, 0.3, 0.15, 0.05]))


def _draws(s: Sampling, n: int = 4000) -> np.ndarray:
    rng = np.random.default_rng(s.seed)
    return np.bincount([sample(LOGITS.copy(), s, rng) for _ in range(n)], minlength=4) / n


def test_temperature_zero_is_greedy() -> None:
    assert _draws(Sampling(temperature=0.0), 50).tolist() == [1.0, 0.0, 0.0, 0.0]


def test_temperature_one_follows_the_distribution() -> None:
    # 4000 draws: the standard error of a share is at most 0.008, so 0.03 is about 4 sigma.
    assert np.allclose(_draws(Sampling(temperature=1.0, seed=1)), [0.5, 0.3, 0.15, 0.05], atol=0.03)


def test_top_k_keeps_only_the_k_most_likely() -> None:
    freq = _draws(Sampling(temperature=1.0, top_k=2, seed=2))
    assert freq[2] == freq[3] == 0
    assert np.allclose(freq[:2], [0.5 / 0.8, 0.3 / 0.8], atol=0.03)


def test_top_p_keeps_the_smallest_nucleus_reaching_p() -> None:
    # 0.5 < 0.7 ≤ 0.5 + 0.3: the nucleus is the first two tokens.
    freq = _draws(Sampling(temperature=1.0, top_p=0.7, seed=3))
    assert freq[2] == freq[3] == 0 and freq[0] > freq[1] > 0
    # Below the first token's probability the nucleus is that token alone.
    assert _draws(Sampling(temperature=1.0, top_p=0.4, seed=3), 200).tolist() == [1.0, 0.0, 0.0, 0.0]


def test_sampling_is_reproducible_from_its_seed() -> None:
    s = Sampling(temperature=0.8, top_k=3, top_p=0.9, seed=7)
    runs = [
        [sample(LOGITS.copy(), s, rng) for _ in range(30)]
        for rng in (np.random.default_rng(7), np.random.default_rng(7))
    ]
    assert runs[0] == runs[1] and len(set(runs[0])) > 1


def test_bos_added_is_a_token_before_the_text_not_an_appended_eos() -> None:
    from edgeft.runtimes import Runtime

    class Fake(Runtime):
        name = "fake"

        def __init__(self, before: list[int], after: list[int]) -> None:
            self.before, self.after = before, after

        def tokenize(self, text: str, add_special: bool = True) -> list[int]:
            return [*self.before, 7, *self.after] if add_special else [7]

        def render_chat(self, messages):  # type: ignore[no-untyped-def]
            return ""

        def logits(self, ids):  # type: ignore[no-untyped-def]
            raise NotImplementedError

        def special_tokens(self):  # type: ignore[no-untyped-def]
            return {}

    assert Fake([1], []).bos_added() == 1
    assert Fake([], [2]).bos_added() is None  # an EOS appended, no BOS
    assert Fake([1], [2]).bos_added() == 1
    assert Fake([], []).bos_added() is None
