"""Paired comparisons of two models answering the same examples: the statistics behind eval's
regression gate, "fine-tuned beats base", and the registry's "not worse than production".

Consumes, per example, whether each model's answer was right (exact match, format compliance)
or the answers themselves (chrF, a corpus metric); produces per metric the two scores, the
relative score, a 95% confidence interval of the difference, a one-sided p-value for "the
candidate is worse", and the verdict. The rule: a candidate is **worse** when it loses at least
`min_discordant` examples that the reference got right, the loss is significant at `alpha`
(a mid-p McNemar test on the discordant pairs; for chrF, a paired bootstrap), and its
score is below `min_relative` of the reference's (the practical margin). A one- or two-answer
difference is therefore never a regression, and neither is a significant but smaller drop than
the margin (a 2% loss of a q4 file on 2,000 examples). The same numbers say how many examples it
takes to detect a drop of the margin's size (`examples_needed`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

ALPHA = 0.05
MIN_DISCORDANT = 3
RESAMPLES = 1000  # paired bootstrap resamples (sacrebleu's default), seeded: the same verdict on rerun
POWER = 0.8


@dataclass(frozen=True)
class Comparison:
    metric: str
    examples: int
    reference: float
    candidate: float
    relative: float  # candidate / reference (1 when the reference scores 0)
    ci: tuple[float, float]  # 95% interval of candidate - reference, in the metric's units
    p: float  # one-sided: how likely a loss this large is if the candidate were as good
    losses: int | None  # examples the reference got right and the candidate wrong (binary metrics)
    wins: int | None  # the reverse
    worse: bool
    needed: int | None  # examples needed to detect a drop of the margin's size (binary metrics)
    alpha: float = ALPHA
    min_relative: float = 0.95

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def kind(self) -> str:
        """worse | not-worse | within-margin (significant, smaller than the margin) | too-few
        (significant, fewer lost than min_discordant) | indistinguishable."""
        if self.worse:
            return "worse"
        if self.candidate >= self.reference:
            return "not-worse"
        if self.p < self.alpha:
            return "within-margin" if self.relative >= self.min_relative else "too-few"
        return "indistinguishable"

    def verdict(self, reference: str = "the reference") -> str:
        """One line for the report: 'worse, p = …' or 'indistinguishable from … on N examples'."""
        numbers, p = self._numbers(), f"p = {self.p:.2g}"
        return {
            "worse": f"worse than {reference}: {numbers}, {p}",
            "not-worse": f"not worse than {reference} on {self.examples} examples ({numbers})",
            "within-margin": f"lower than {reference} ({p}) but within the margin: keeps {self.relative:.1%} ({numbers})",
            "too-few": f"lower than {reference} ({p}) on too few examples to fail ({numbers})",
            "indistinguishable": f"indistinguishable from {reference} on {self.examples} examples ({numbers}, {p})",
        }[self.kind]

    def short(self) -> str:
        """The verdict in a few words (the model card's one line per artifact)."""
        p = f"p = {self.p:.2g}"
        return {
            "worse": f"worse ({p})",
            "not-worse": "not worse",
            "within-margin": f"lower, {p}, but within the margin ({self.relative:.1%})",
            "too-few": f"lower, {p}, but too few lost",
            "indistinguishable": f"indistinguishable ({p})",
        }[self.kind]

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Comparison:
        return cls(**{**d, "ci": tuple(d["ci"])})

    def _numbers(self) -> str:
        pair = f"{self.losses} lost, {self.wins} won; " if self.losses is not None else ""
        return (
            f"{pair}{self.candidate:.3g} vs {self.reference:.3g}, difference {self.candidate - self.reference:+.3g} "
            f"[{self.ci[0]:+.3g}, {self.ci[1]:+.3g}]"
        )


def _bootstrap_ci(diffs: np.ndarray) -> tuple[float, float]:
    """95% percentile interval of the mean of per-example differences, resampled over examples."""
    if len(diffs) == 0:
        return (0.0, 0.0)
    rng = np.random.default_rng(12345)
    means = diffs[rng.integers(0, len(diffs), size=(RESAMPLES, len(diffs)))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return (float(low), float(high))


def mcnemar_p(losses: int, wins: int) -> float:
    """One-sided mid-p McNemar test: the chance of more than `losses` of the discordant pairs going
    against the candidate, plus half the chance of exactly `losses`, if each were a fair coin.
    The exact (conditional) test counts all of the latter and holds its level with room to spare,
    so it misses real drops on small sets; the mid-p version keeps close to the level and is the
    recommended one (Fagerland, Lydersen and Laake, BMC Med. Res. Methodol. 13:91, 2013). Four
    losses and no wins: p = 0.031 (exact: 0.0625)."""
    from scipy.stats import binom

    n = losses + wins
    if n == 0:
        return 1.0
    return float(binom.sf(losses - 1, n, 0.5) - 0.5 * binom.pmf(losses, n, 0.5))


def examples_needed(
    drop: float, alpha: float = ALPHA, min_discordant: int = MIN_DISCORDANT, power: float = POWER
) -> int | None:
    """How many examples it takes to find a candidate worse with `power`, when it loses a
    `drop` fraction of the examples and wins none back (the most favourable case: any win back
    needs more). None when the drop is 0 or more than 100,000 examples would be needed."""
    from scipy.stats import binom

    if drop <= 0:
        return None
    k = max(min_discordant, 1)
    while mcnemar_p(k, 0) >= alpha:
        k += 1
    n = np.arange(k, 100_001)
    enough = np.nonzero(binom.sf(k - 1, n, min(drop, 1.0)) >= power)[0]
    return int(n[enough[0]]) if len(enough) else None


def compare_binary(
    metric: str,
    reference: Sequence[bool],
    candidate: Sequence[bool],
    *,
    min_relative: float,
    alpha: float = ALPHA,
    min_discordant: int = MIN_DISCORDANT,
) -> Comparison:
    """Per-example right/wrong of the reference and the candidate on the same examples."""
    ref = np.asarray(reference, dtype=bool)
    cand = np.asarray(candidate, dtype=bool)
    if ref.shape != cand.shape:
        raise ValueError(f"{metric}: {len(ref)} reference and {len(cand)} candidate answers")
    losses, wins = int(np.sum(ref & ~cand)), int(np.sum(cand & ~ref))
    r, c = (float(x.mean()) if len(x) else 0.0 for x in (ref, cand))
    relative = c / r if r > 0 else 1.0
    p = mcnemar_p(losses, wins)
    worse = bool(losses >= min_discordant and p < alpha and relative < min_relative)
    return Comparison(
        metric,
        len(ref),
        r,
        c,
        float(relative),
        _bootstrap_ci(cand.astype(float) - ref.astype(float)),
        p,
        losses,
        wins,
        worse,
        examples_needed(r * (1 - min_relative), alpha, min_discordant),
        alpha,
        min_relative,
    )


def compare_chrf(
    reference: Sequence[str],
    candidate: Sequence[str],
    references: Sequence[str],
    *,
    min_relative: float,
    alpha: float = ALPHA,
) -> Comparison:
    """Corpus chrF of the candidate's answers and the reference model's, by paired bootstrap
    resampling over examples: sacrebleu's sufficient statistics per answer, summed over each
    resample, as sacrebleu's own paired test does; here one-sided (p: the share of resamples in
    which the candidate is not below the reference) with the interval of the difference from the
    same resamples. The margin applies as for binary metrics (there is no discordant count)."""
    from sacrebleu.metrics import CHRF

    metric = CHRF()
    n = len(references)
    if len(reference) != n or len(candidate) != n:
        raise ValueError(
            f"chrf: {len(reference)} reference and {len(candidate)} candidate answers for {n} examples"
        )
    stats = [
        np.array(metric._extract_corpus_statistics(list(h), [list(references)]), dtype=np.float64)
        for h in (reference, candidate)
    ]
    score = [float(metric._compute_score_from_stats(list(s.sum(axis=0))).score) for s in stats]
    rng = np.random.default_rng(12345)
    picks = rng.integers(0, n, size=(RESAMPLES, n))
    diffs = np.array(
        [
            metric._compute_score_from_stats(list(stats[1][i].sum(axis=0))).score
            - metric._compute_score_from_stats(list(stats[0][i].sum(axis=0))).score
            for i in picks
        ]
    )
    p = float((np.sum(diffs >= 0) + 1) / (RESAMPLES + 1)) if score[1] < score[0] else 1.0
    low, high = np.percentile(diffs, [2.5, 97.5])
    relative = score[1] / score[0] if score[0] > 0 else 1.0
    worse = bool(p < alpha and relative < min_relative)
    return Comparison(
        "chrf",
        n,
        score[0],
        score[1],
        float(relative),
        (float(low), float(high)),
        p,
        None,
        None,
        worse,
        None,
        alpha,
        min_relative,
    )
