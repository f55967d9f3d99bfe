"""What eval hands on (eval/results.json) to package and the registry's promotion gate: every
model's scores and verdicts (`EvalResults`, one `ModelResult` per model), each example's outcome
per model (`PerExample`) and the gate's rule; read and written here only, and the paired
comparison of two versions on the examples they share.

On disk the outcomes stay strings of "0"/"1" per model and metric (dists and registries made
before this module read the same); in memory they are booleans.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from edgeft.judge.paired import Comparison

METRICS = ("exact_match", "chrf", "format", "tool_call")  # eval's metrics, in report order; higher is better
# The binary metrics measured only where configured or where the data has them.
OPTIONAL_BINARY = ("format", "tool_call")
# How reports name them.
METRIC_NAMES = {"exact_match": "exact match", "chrf": "chrF", "format": "format", "tool_call": "tool calls"}
RESULTS = "eval/results.json"  # where a dist keeps eval's results


@dataclass(frozen=True)
class PerExample:
    ids: list[str]  # each example's identity across evaluations (evaluate.example_id)
    references: list[str]
    answers: dict[str, list[str]]  # model → its answer to each example
    right: dict[str, dict[str, list[bool]]]  # model → binary metric → whether each example held

    def to_json(self) -> dict[str, Any]:
        return {
            "ids": self.ids,
            "references": self.references,
            "answers": self.answers,
            "right": {
                name: {m: "".join("01"[x] for x in held) for m, held in metrics.items()}
                for name, metrics in self.right.items()
            },
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PerExample:
        return cls(
            ids=list(data["ids"]),
            references=list(data["references"]),
            answers={name: list(a) for name, a in data["answers"].items()},
            right={
                name: {m: [c == "1" for c in held] for m, held in metrics.items()}
                for name, metrics in data["right"].items()
            },
        )


@dataclass
class PreferenceResults:
    """Preference parity on the held-out pairs (after align; edgeft.pipeline.evaluate.preference)."""

    pairs: int
    scoring: str  # how a model's preference is read, in words
    models: dict[str, dict[str, Any]]  # model → {accuracy, mean_margin, right} or {error}
    paired: dict[str, dict[str, Any]] = field(default_factory=dict)  # artifact → Comparison.to_dict()
    verdicts: dict[str, str] = field(default_factory=dict)  # artifact → the comparison in words
    versus: dict[str, dict[str, Any]] = field(default_factory=dict)  # "sft" / "base" → {better, p, …}

    def accuracy(self) -> dict[str, float | None]:
        return {name: m.get("accuracy") for name, m in self.models.items()}

    def to_json(self) -> dict[str, Any]:
        return {
            "pairs": self.pairs,
            "scoring": self.scoring,
            "models": self.models,
            "paired": self.paired,
            "verdicts": self.verdicts,
            "versus": self.versus,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PreferenceResults:
        return cls(
            pairs=int(data["pairs"]),
            scoring=str(data.get("scoring", "")),
            models=dict(data["models"]),
            paired=dict(data.get("paired") or {}),
            verdicts=dict(data.get("verdicts") or {}),
            versus=dict(data.get("versus") or {}),
        )


@dataclass(frozen=True)
class Rule:
    """The gate's rule, as the evaluation that wrote the results had it (eval.* in its config)."""

    min_relative: float
    alpha: float
    min_discordant: int


@dataclass
class ModelResult:
    """One model's results: the base, the fine-tuned model, or an artifact (which alone has a
    paired comparison with the fine-tuned model and a verdict)."""

    runtime: str
    scores: dict[str, float]  # metric -> score (METRICS)
    speed: dict[str, Any] | None = None  # tokens/s on this machine, where measured
    relative: dict[str, float] | None = None  # metric -> share of the fine-tuned model's score
    paired: dict[str, dict[str, Any]] | None = None  # metric -> judge.paired.Comparison.to_dict()
    verdicts: dict[str, str] | None = None  # metric -> the comparison in words
    passed: bool | None = None  # None: not judged (base and fine-tuned)
    error: str | None = None  # why its runtime could not run it

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ModelResult:
        return cls(
            runtime=str(data.get("runtime")),
            scores=dict(data.get("scores") or {}),
            speed=data.get("speed"),
            relative=data.get("relative"),
            paired=data.get("paired"),
            verdicts=data.get("verdicts"),
            passed=data.get("passed"),
            error=data.get("error"),
        )

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"runtime": self.runtime, "scores": self.scores}
        for key in ("speed", "relative", "paired", "verdicts", "passed", "error"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        return out


@dataclass
class EvalResults:
    """results.json: every model's scores on the held-out examples, the gate's rule and verdict,
    fine-tuned against base, and each example's outcome. Results of earlier edgeft versions read
    too (what they lack is None)."""

    examples: int
    max_new_tokens: int | None
    format: str | None  # the format check's description (eval.format), if any
    min_relative: float
    alpha: float | None  # None: written before the paired gate
    min_discordant: int | None
    models: dict[str, ModelResult] = field(default_factory=dict)
    improvement: dict[str, float] = field(default_factory=dict)  # fine-tuned minus base, per metric
    versus_base: dict[str, dict[str, Any]] = field(default_factory=dict)  # metric -> {better, p}
    versus_sft: dict[str, dict[str, Any]] | None = None  # after align: the same, against the SFT model
    examples_needed: int | None = None
    per_example: PerExample | None = None
    general: dict[str, Any] | None = None  # general-capability prompts: scores, chrf_drop, forgetting
    # Held-out preference pairs (after align): per model accuracy and margin, artifacts' verdicts.
    preference: PreferenceResults | None = None
    samples: list[dict[str, Any]] = field(default_factory=list)
    passed: bool = False
    failures: list[str] = field(default_factory=list)

    @property
    def fine_tuned(self) -> ModelResult:
        return self.models["fine-tuned"]

    @property
    def metrics(self) -> list[str]:
        """The metrics this evaluation scored, in report order."""
        return [m for m in METRICS if m in self.fine_tuned.scores]

    @property
    def rule(self) -> Rule | None:
        if self.alpha is None or self.min_discordant is None:
            return None
        return Rule(self.min_relative, self.alpha, self.min_discordant)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> EvalResults:
        return cls(
            examples=int(data.get("examples") or len((data.get("per_example") or {}).get("ids") or [])),
            max_new_tokens=data.get("max_new_tokens"),
            format=data.get("format"),
            min_relative=float(data.get("min_relative", 0.0)),
            alpha=data.get("alpha"),
            min_discordant=data.get("min_discordant"),
            models={k: ModelResult.from_json(v) for k, v in data["models"].items()},
            improvement=dict(data.get("improvement") or {}),
            versus_base=dict(data.get("versus_base") or {}),
            examples_needed=data.get("examples_needed"),
            per_example=PerExample.from_json(data["per_example"]) if "per_example" in data else None,
            general=data.get("general"),
            preference=PreferenceResults.from_json(data["preference"]) if data.get("preference") else None,
            versus_sft=data.get("versus_sft"),
            samples=list(data.get("samples") or []),
            passed=bool(data.get("passed")),
            failures=list(data.get("failures") or []),
        )

    @classmethod
    def read(cls, path: Path) -> EvalResults:
        from edgeft.core.errors import InputError

        try:
            return cls.from_json(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError, RecursionError, KeyError, TypeError, AttributeError) as e:
            raise InputError(
                f"{path}: not readable eval results ({e.__class__.__name__}); re-run `edgeft eval`"
            ) from None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "examples": self.examples,
            "max_new_tokens": self.max_new_tokens,
            "format": self.format,
            "min_relative": self.min_relative,
        }
        if self.alpha is not None:
            out.update(alpha=self.alpha, min_discordant=self.min_discordant)
        out.update(
            models={k: v.to_json() for k, v in self.models.items()},
            samples=self.samples,
            improvement=self.improvement,
            versus_base=self.versus_base,
            examples_needed=self.examples_needed,
        )
        if self.per_example is not None:
            out["per_example"] = self.per_example.to_json()
        if self.general is not None:
            out["general"] = self.general
        if self.preference is not None:
            out["preference"] = self.preference.to_json()
        if self.versus_sft is not None:
            out["versus_sft"] = self.versus_sft
        out.update(passed=self.passed, failures=self.failures)
        return out


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
        results = EvalResults.read(path)
        if results.per_example is None or results.rule is None:
            return None
        return cls(
            per_example=results.per_example,
            scores={name: m.scores for name, m in results.models.items()},
            rule=results.rule,
        )


def compare_outcomes(
    reference_right: dict[str, list[bool]],
    candidate_right: dict[str, list[bool]],
    reference_answers: list[str],
    candidate_answers: list[str],
    references: list[str],
    rule: Rule,
) -> dict[str, Comparison]:
    """The paired comparison (edgeft.judge.paired) of two models' answers to the same examples, per
    metric in METRICS order: each binary metric both have, and chrF of the answers. What eval's
    gate, "beats the base" and the registry's promotion all judge by."""
    from edgeft.judge.paired import compare_binary, compare_chrf

    limits = {"min_relative": rule.min_relative, "alpha": rule.alpha}
    out = {
        m: compare_binary(
            m, reference_right[m], candidate_right[m], **limits, min_discordant=rule.min_discordant
        )
        for m in reference_right
        if m in candidate_right
    }
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
            out += [
                f"{model} {m}: {s_new[m]:.4g} is below {new.rule.min_relative:.0%} of {s_old[m]:.4g} (no shared "
                f"held-out examples to pair)"
                for m in METRICS
                if m in s_new and m in s_old and s_new[m] < new.rule.min_relative * s_old[m]
            ]
            continue
        compared = compare_outcomes(
            {m: [held[j] for _, j in shared] for m, held in b.right[model].items()},
            {m: [held[k] for k, _ in shared] for m, held in a.right[model].items()},
            [b.answers[model][j] for _, j in shared],
            [a.answers[model][k] for k, _ in shared],
            [a.references[k] for k, _ in shared],
            new.rule,
        )
        # the binary metrics first, then chrF
        for metric in sorted(compared, key=lambda m: m == "chrf"):
            if compared[metric].worse:
                out.append(f"{model} {metric}: {compared[metric].verdict(old_name)}")
    return out
