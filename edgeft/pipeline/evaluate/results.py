"""What eval hands on (eval/results.json) to the registry's promotion gate: each example's
outcome per model, typed, and the gate's rule; read and written here only, and the paired
comparison of two versions on the examples they share.

On disk the outcomes stay strings of "0"/"1" per model and metric (dists and registries made
before this module read the same); in memory they are booleans.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from edgeft.judge.paired import Comparison

METRICS = ("exact_match", "chrf", "format")  # eval's metrics, in report order; higher is better
RESULTS = "eval/results.json"  # where a dist keeps eval's results


@dataclass(frozen=True)
class PerExample:
    ids: list[str]  # each example's identity across evaluations (evaluate.example_id)
    references: list[str]
    answers: dict[str, list[str]]  # model → its answer to each example
    right: dict[str, dict[str, list[bool]]]  # model → binary metric → whether each example held

    def to_json(self) -> dict[str, Any]:
        return {"ids": self.ids, "references": self.references, "answers": self.answers,
                "right": {name: {m: "".join("01"[x] for x in held) for m, held in metrics.items()}
                          for name, metrics in self.right.items()}}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PerExample:
        return cls(ids=list(data["ids"]), references=list(data["references"]),
                   answers={name: list(a) for name, a in data["answers"].items()},
                   right={name: {m: [c == "1" for c in held] for m, held in metrics.items()}
                          for name, metrics in data["right"].items()})


@dataclass(frozen=True)
class Rule:
    """The gate's rule, as the evaluation that wrote the results had it (eval.* in its config)."""

    min_relative: float
    alpha: float
    min_discordant: int


@dataclass(frozen=True)
class VersionResults:
    per_example: PerExample
    scores: dict[str, dict[str, float]]  # model → metric → score
    rule: Rule

    @classmethod
    def read(cls, folder: Path | None) -> VersionResults | None:
        """A dist's (or registered version's) results; None where it has none or was evaluated
        before per-example results were kept."""
        path = folder / RESULTS if folder is not None else None
        if path is None or not path.is_file():
            return None
        data = json.loads(path.read_text(encoding="utf-8"))
        if "per_example" not in data or "alpha" not in data:
            return None
        return cls(per_example=PerExample.from_json(data["per_example"]),
                   scores={name: dict(m["scores"]) for name, m in data["models"].items()},
                   rule=Rule(data["min_relative"], data["alpha"], data["min_discordant"]))


def compare_outcomes(reference_right: dict[str, list[bool]], candidate_right: dict[str, list[bool]],
                     reference_answers: list[str], candidate_answers: list[str], references: list[str],
                     rule: Rule) -> dict[str, Comparison]:
    """The paired comparison (edgeft.judge.paired) of two models' answers to the same examples, per
    metric in METRICS order: each binary metric both have, and chrF of the answers. What eval's
    gate, "beats the base" and the registry's promotion all judge by."""
    from edgeft.judge.paired import compare_binary, compare_chrf

    limits = {"min_relative": rule.min_relative, "alpha": rule.alpha}
    out = {m: compare_binary(m, reference_right[m], candidate_right[m], **limits, min_discordant=rule.min_discordant)
           for m in reference_right if m in candidate_right}
    out["chrf"] = compare_chrf(reference_answers, candidate_answers, references, **limits)
    return {m: out[m] for m in METRICS if m in out}


def compare_versions(new: VersionResults, old: VersionResults, old_name: str = "production") -> list[str]:
    """Where `new` is worse than `old`: `compare_outcomes` on the examples both evaluated, for the
    fine-tuned model and each artifact both have, under the new version's rule; without shared
    examples (another held-out split), the practical margin on the two scores."""
    a, b = new.per_example, old.per_example
    where_old = {i: k for k, i in enumerate(b.ids)}
    shared = [(k, where_old[i]) for k, i in enumerate(a.ids) if i in where_old]
    out = []
    for model in [m for m in a.answers if m in b.answers and m != "base"]:
        if not shared:
            s_new, s_old = new.scores[model], old.scores[model]
            out += [f"{model} {m}: {s_new[m]:.4g} is below {new.rule.min_relative:.0%} of {s_old[m]:.4g} (no shared "
                    f"held-out examples to pair)" for m in METRICS if m in s_new and m in s_old
                    and s_new[m] < new.rule.min_relative * s_old[m]]
            continue
        compared = compare_outcomes(
            {m: [held[j] for _, j in shared] for m, held in b.right[model].items()},
            {m: [held[k] for k, _ in shared] for m, held in a.right[model].items()},
            [b.answers[model][j] for _, j in shared], [a.answers[model][k] for k, _ in shared],
            [a.references[k] for k, _ in shared], new.rule)
        # the binary metrics first, then chrF
        for metric in sorted(compared, key=lambda m: m == "chrf"):
            if compared[metric].worse:
                out.append(f"{model} {metric}: {compared[metric].verdict(old_name)}")
    return out
