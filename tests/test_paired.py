"""The regression gate as a paired decision (edgeft/judge/paired.py) on constructed answer sets: one
answer cannot flip it, a real drop fails with its p-value, chrF by paired bootstrap, how many
examples a drop needs, and the registry's "not worse than production" on the same rule."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import on_disk
from test_registry import make_dist

from edgeft.cli import cli
from edgeft.judge.paired import compare_binary, compare_chrf, examples_needed, mcnemar_p
from edgeft.pipeline.evaluate import Checks, compare_answers, markdown, verdict_lines, versus_base
from edgeft.pipeline.evaluate.results import EvalResults, Rule
from edgeft.registry.routing import Ref
from edgeft.registry.store import Registry

GATE = {"min_relative": 0.95, "alpha": 0.05, "min_discordant": 3}  # eval.* as results.json records them
RULE = Rule(**GATE)
QUESTIONS = [f"SELECT name FROM employees WHERE id = {i};" for i in range(24)]


def answers(right: int, questions: list[str] = QUESTIONS, offset: int = 0) -> list[str]:
    """Answers to the questions: `right` of them correct, starting at `offset` (wrapping)."""
    good = {(offset + k) % len(questions) for k in range(right)}
    return [q if i in good else "SELECT * FROM employees;" for i, q in enumerate(questions)]


def test_one_answer_on_24_passes_and_a_real_drop_fails_with_its_p_value() -> None:
    # The case: 0.833 against 0.875 (95.2%) passed by one answer, and at 19 vs 18 (94.7%)
    # a plain ratio would have failed it. Paired: one lost example is never a regression.
    for ref, cand in ((21, 20), (19, 18), (18, 17)):
        got = compare_answers(answers(ref), answers(cand), QUESTIONS, Checks(), RULE)["exact_match"]
        assert (got.losses, got.wins, got.worse) == (1, 0, False)
        assert got.relative < 0.95 or ref == 21
        assert "indistinguishable from the reference on 24 examples" in got.verdict()
    # 20 of 24 → 12 of 24: eight lost, none won back: p = 0.5^8 / 2 (mid-p McNemar, one-sided).
    got = compare_answers(answers(20), answers(12), QUESTIONS, Checks(), RULE)
    exact = got["exact_match"]
    assert (exact.losses, exact.wins, exact.worse) == (8, 0, True)
    assert exact.p == pytest.approx(0.5**9) and "p = 0.002" in exact.verdict()
    assert exact.ci[1] < 0 < exact.reference - exact.candidate  # the interval excludes "no drop"
    assert got["chrf"].worse and got["chrf"].p < 0.05
    # The same scores with answers that trade places (6 lost, 6 won... net 0) are not worse.
    swapped = compare_binary(
        "exact_match", [i < 12 for i in range(24)], [i >= 12 for i in range(24)], min_relative=0.95
    )
    assert (swapped.losses, swapped.wins, swapped.worse) == (12, 12, False) and swapped.p == pytest.approx(
        0.5
    )


def test_each_condition_of_the_rule_is_needed() -> None:
    # Significant but within the practical margin: 2,000 examples, 40 lost (2%): a q4 file's loss.
    ref = [True] * 2000
    cand = [True] * 1960 + [False] * 40
    c = compare_binary("exact_match", ref, cand, min_relative=0.95)
    assert c.p < 1e-9 and c.relative == pytest.approx(0.98) and not c.worse
    # Below the margin and significant, but fewer lost examples than min_discordant.
    c = compare_binary("exact_match", [True] * 4, [False] * 4, min_relative=0.95, min_discordant=5)
    assert c.p == pytest.approx(1 / 32) and not c.worse and "on too few examples to fail" in c.verdict()
    assert compare_binary("exact_match", [True] * 4, [False] * 4, min_relative=0.95, min_discordant=4).worse
    # mid-p: the exact test's P(X >= k) less half of P(X = k); 3 losses of 3 are not enough at 0.05.
    assert mcnemar_p(0, 0) == 1.0 and mcnemar_p(4, 0) == pytest.approx(1 / 32) and mcnemar_p(3, 0) > 0.05
    assert (
        "within the margin: keeps 98.0%"
        in compare_binary("exact_match", ref, cand, min_relative=0.95).verdict()
    )
    # A reference that scores 0 cannot be lost against.
    assert not compare_binary("format", [False] * 10, [False] * 10, min_relative=0.95).worse


def test_chrf_by_paired_bootstrap() -> None:
    same = compare_chrf(QUESTIONS, QUESTIONS, QUESTIONS, min_relative=0.95)
    assert same.relative == 1.0 and not same.worse and same.p == 1.0
    slightly = [q.replace("employees", "employee") if i == 0 else q for i, q in enumerate(QUESTIONS)]
    assert not compare_chrf(QUESTIONS, slightly, QUESTIONS, min_relative=0.95).worse
    broken = [
        q.replace("WHERE", "WHEN").replace("name", "nme") if i % 2 else q for i, q in enumerate(QUESTIONS)
    ]
    c = compare_chrf(QUESTIONS, broken, QUESTIONS, min_relative=0.95)
    assert c.worse and c.p < 0.05 and c.ci[1] < 0 and c.relative < 0.95
    assert compare_chrf(QUESTIONS, broken, QUESTIONS, min_relative=0.95) == c  # seeded: the same verdict
    assert (
        json.loads(json.dumps(c.to_dict()))["worse"] is True
    )  # plain Python values: results.json takes them


def test_examples_needed_to_tell_a_drop() -> None:
    # With no wins back, the mid-p test needs 4 losses at 0.05 (0.5^4 / 2 < 0.05 < 0.5^3 / 2).
    assert examples_needed(1.0) == 4
    small, large = examples_needed(0.05), examples_needed(0.2)
    assert small is not None and large is not None and 4 < large < small
    # 80% power: at the computed size the expected losses exceed the 4 the test needs.
    assert small * 0.05 > 4 and examples_needed(1e-6) is None and examples_needed(0) is None
    got = compare_binary(
        "exact_match", [True] * 21 + [False] * 3, [True] * 20 + [False] * 4, min_relative=0.95
    )
    assert got.needed == examples_needed(0.875 * 0.05) and got.needed > 24


def test_the_report_says_which_artifacts_are_indistinguishable_and_which_are_worse() -> None:
    outputs = {
        "fine-tuned": answers(20),
        "base": answers(2),
        "gguf-q8_0": answers(19),
        "gguf-q2_k": answers(12),
    }
    models = {}
    for name, outs in outputs.items():
        entry = {
            "runtime": "x",
            "scores": {
                "exact_match": sum(o == q for o, q in zip(outs, QUESTIONS, strict=True)) / 24,
                "chrf": 0.0,
            },
        }
        if name not in ("base", "fine-tuned"):
            compared = compare_answers(outputs["fine-tuned"], outs, QUESTIONS, Checks(), RULE)
            entry |= {
                "relative": {m: c.relative for m, c in compared.items()},
                "paired": {m: c.to_dict() for m, c in compared.items()},
                "verdicts": {m: c.verdict("the fine-tuned model") for m, c in compared.items()},
                "passed": not any(c.worse for c in compared.values()),
            }
        models[name] = entry
    text = markdown(
        EvalResults.from_json(
            {
                "examples": 24,
                "max_new_tokens": 64,
                "format": None,
                **GATE,
                "models": models,
                "improvement": {"exact_match": 0.75, "chrf": 0.0},
                "passed": False,
                "failures": [],
                "samples": [],
                "examples_needed": examples_needed(20 / 24 * 0.05),
            }
        )
    )
    assert "- gguf-q8_0, exact match: indistinguishable from the fine-tuned model on 24 examples" in text
    assert "- gguf-q2_k, exact match: worse than the fine-tuned model: 8 lost, 0 won" in text
    assert "p = 0.002" in text and "significant (one-sided p < 0.05" in text
    assert "takes at least" in text and "this evaluation has 24. Below that" in text
    card = verdict_lines(
        EvalResults.from_json(json.loads(json.dumps({"examples": 24, **GATE, "models": models}))), short=True
    )
    assert (
        card[1] == "- gguf-q2_k against the fine-tuned model on 24 examples: exact match worse (p = 0.002); "
        "chrF worse (p = 0.001)"
    )
    assert card[0].startswith(
        "- gguf-q8_0 against the fine-tuned model on 24 examples: exact match indistinguishable"
    )


def _results(right: int, *, offset: int = 0, questions: list[str] = QUESTIONS) -> dict:
    """eval/results.json as evaluate writes it, for a version whose fine-tuned model and q8_0
    answer `right` of the questions."""
    outs = answers(right, questions, offset)
    flags = "".join("01"[o == q] for o, q in zip(outs, questions, strict=True))
    score = {"exact_match": right / len(questions), "chrf": 90.0}
    return {
        "examples": len(questions),
        **GATE,
        "passed": True,
        "models": {m: {"scores": score} for m in ("fine-tuned", "base", "gguf-q8_0")},
        "per_example": {
            "ids": list(questions),
            "references": questions,
            "answers": {m: outs for m in ("fine-tuned", "base", "gguf-q8_0")},
            "right": {m: {"exact_match": flags} for m in ("fine-tuned", "base", "gguf-q8_0")},
        },
    }


def test_registry_promotion_uses_the_paired_rule(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "registry")
    reg.add(make_dist(tmp_path / "v1", exact=21 / 24, seed="a", results=_results(21)))
    reg.add(make_dist(tmp_path / "v2", exact=20 / 24, seed="b", results=_results(20)))
    reg.add(make_dist(tmp_path / "v3", exact=12 / 24, seed="c", results=_results(12)))
    reg.promote(Ref.parse("m:1"))
    # One answer lower on the same 24 examples: the old rule (any drop) refused this; paired, it passes.
    assert reg.promote(Ref.parse("m:2"))["regressions"] == []
    result = CliRunner().invoke(cli, ["registry", "promote", "m:3", "--registry", str(reg.root)])
    assert result.exit_code == 11, result.output
    assert "fine-tuned exact_match: worse than production: 8 lost, 0 won" in result.output
    assert "p = 0.002" in result.output and "--force" in result.output
    assert on_disk(reg)["models"]["m"]["aliases"]["production"] == 2
    # Versions evaluated on other held-out examples cannot be paired: only the margin applies.
    other = [q.replace("employees", "staff") for q in QUESTIONS]
    reg.add(make_dist(tmp_path / "v4", exact=18 / 24, seed="d", results=_results(18, questions=other)))
    result = CliRunner().invoke(cli, ["registry", "promote", "m:4", "--registry", str(reg.root)])
    assert (
        result.exit_code == 11
        and "below 95% of 0.8333 (no shared held-out examples to pair)" in result.output
    )


def test_fine_tuned_beats_base_on_the_same_test() -> None:
    both = versus_base(answers(20), answers(2), QUESTIONS, Checks(), RULE)
    assert json.loads(json.dumps(both)) == both
    clear = both["exact_match"]
    assert (
        clear["better"] and clear["fine_tuned_only"] == 18 and clear["base_only"] == 0 and clear["p"] < 1e-5
    )
    assert clear["ci"][0] > 0  # the interval of fine-tuned minus base excludes 0
    close = versus_base(answers(12), answers(10), QUESTIONS, Checks(), RULE)["exact_match"]
    assert not close["better"] and close["p"] > 0.05 and close["difference"] == pytest.approx(2 / 24)
