"""Near-duplicates in linear time (edgeft/data/neardup.py): the same findings as comparing every pair,
bounded work on templated data, and a report that says when the bound was reached."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgeft.cli import cli
from edgeft.data import neardup
from edgeft.data.rows import load_examples

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "nl2sql" / "data" / "nl2sql.jsonl"


def exhaustive(
    texts: list[tuple[str, str]], keys: list[str], threshold: float
) -> dict[int, tuple[float, int]]:
    """Every row against every earlier row: the most similar (the earliest on a tie) at or above threshold."""
    grams = [(neardup.shingles(p), neardup.shingles(a)) for p, a in texts]
    out = {}
    for i in range(len(texts)):
        best, partner = 0.0, -1
        for j in range(i):
            if keys[j] != keys[i]:
                sim = min(
                    neardup.jaccard(grams[i][0], grams[j][0]), neardup.jaccard(grams[i][1], grams[j][1])
                )
                if sim > best:
                    best, partner = sim, j
        if best >= threshold:
            out[i] = (best, partner)
    return out


def templated(n: int) -> list[tuple[str, str]]:
    return [
        (f"What is the salary of employee {i}?", f"SELECT salary FROM employees WHERE id = {i};")
        for i in range(n)
    ]


@pytest.mark.parametrize("threshold", [0.9, 0.8, 0.7])
def test_the_bundled_example_gives_what_comparing_every_pair_gives(threshold: float) -> None:
    examples = load_examples(EXAMPLE).examples
    texts, keys = [e.parts() for e in examples], [e.key() for e in examples]
    found, capped = neardup.within(texts, keys, threshold)
    want = exhaustive(texts, keys, threshold)
    assert capped == 0 and len(want) > 100  # the example is templated: a real test of the search
    assert {i: round(s, 9) for i, (s, _) in found.items()} == {i: round(s, 9) for i, (s, _) in want.items()}
    # The partner is the most similar earlier row; where several tie, any of them may be named.
    assert all(neardup.similarity(texts[i], texts[j]) == s for i, (s, j) in found.items())


def test_copies_of_validation_rows_are_found_across_sets() -> None:
    examples = load_examples(EXAMPLE).examples
    refs, queries = examples[:100], examples[100:]
    found = neardup.across(
        [q.parts() for q in queries],
        [q.key() for q in queries],
        [r.parts() for r in refs],
        [r.key() for r in refs],
        0.9,
    )
    want = {
        i
        for i, q in enumerate(queries)
        if any(r.key() != q.key() and neardup.similarity(q.parts(), r.parts()) >= 0.9 for r in refs)
    }
    assert set(found) == want and want


def test_templated_rows_cost_bounded_work_and_the_report_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A budget for 200 rows' worth of full comparisons: 3,000 templated rows all look alike.
    monkeypatch.setattr(neardup, "PAIR_BUDGET", 3200)
    monkeypatch.setattr(neardup, "CONFIRM_BUDGET", 800)
    calls = []
    exact = neardup.jaccard
    monkeypatch.setattr(neardup, "jaccard", lambda a, b: calls.append(1) or exact(a, b))
    rows = templated(3000)
    cap, confirm = neardup.limits(len(rows))
    assert (cap, confirm) == (neardup.MIN_CAP, neardup.MIN_CONFIRM)
    found, capped = neardup.within(rows, [f"{p}\n{a}" for p, a in rows], 0.9)
    # Two exact similarities (prompt, answer) per confirmed pair, at most `confirm` pairs per row.
    assert len(calls) <= 2 * confirm * len(rows)
    assert capped > len(rows) // 2 and len(found) > len(rows) // 3

    data = tmp_path / "templated.jsonl"
    data.write_text(
        "".join(
            json.dumps({"messages": [{"role": "user", "content": p}, {"role": "assistant", "content": a}]})
            + "\n"
            for p, a in rows
        )
    )
    result = CliRunner().invoke(cli, ["data", "check", str(data)])
    assert result.exit_code == 0, result.output
    assert (
        f"near-duplicate check: {capped} row(s) resemble more earlier rows than it compares" in result.output
    )
    report = json.loads(CliRunner().invoke(cli, ["data", "check", str(data), "--json"]).stdout)
    assert report["near_duplicates"]["rows_not_fully_compared"] == capped


def test_unrelated_text_sharing_common_words_is_not_reported_as_capped() -> None:
    import random

    rng = random.Random(0)
    words = ["the", "a", "of", "to", "and"] * 40 + [f"w{i}x" for i in range(3000)]
    rows = [(" ".join(rng.choices(words, k=20)), " ".join(rng.choices(words, k=30))) for _ in range(4000)]
    found, capped = neardup.within(rows, [f"{p}\n{a}" for p, a in rows], 0.9)
    assert found == {} and capped == 0
