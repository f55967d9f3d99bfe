"""eval/results.json as the registry reads it (edgeft.pipeline.evaluate.results): per-example outcomes typed as
booleans, the file's "0"/"1" strings unchanged, and the paired comparison of two versions."""

from __future__ import annotations

import json
from pathlib import Path

from edgeft.pipeline.evaluate.results import RESULTS, PerExample, Rule, VersionResults, compare_versions


def _results(folder: Path, exact: str, answers: list[str], ids: list[str] | None = None) -> Path:
    n = len(exact)
    refs = [f"SELECT {i};" for i in range(n)]
    data = {
        "alpha": 0.05,
        "min_relative": 0.95,
        "min_discordant": 3,
        "models": {"fine-tuned": {"scores": {"exact_match": exact.count("1") / n}}},
        "per_example": {
            "ids": ids or [f"e{i}" for i in range(n)],
            "references": refs,
            "answers": {"fine-tuned": answers},
            "right": {"fine-tuned": {"exact_match": exact}},
        },
    }
    (folder / "eval").mkdir(parents=True)
    (folder / RESULTS).write_text(json.dumps(data))
    return folder


def test_outcomes_are_booleans_in_memory_and_the_same_strings_on_disk(tmp_path: Path) -> None:
    folder = _results(tmp_path, "0110", ["a", "SELECT 1;", "SELECT 2;", "b"])
    read = VersionResults.read(folder)
    assert read is not None and read.rule == Rule(0.95, 0.05, 3)
    assert read.per_example.right["fine-tuned"]["exact_match"] == [False, True, True, False]
    on_disk = json.loads((folder / RESULTS).read_text())["per_example"]
    assert read.per_example.to_json() == on_disk
    assert PerExample.from_json(on_disk) == read.per_example
    # Results written before per-example outcomes were kept: no paired comparison.
    (tmp_path / "old" / "eval").mkdir(parents=True)
    (tmp_path / "old" / RESULTS).write_text(json.dumps({"models": {}}))
    assert VersionResults.read(tmp_path / "old") is None and VersionResults.read(None) is None


def test_a_version_that_loses_shared_examples_is_named(tmp_path: Path) -> None:
    refs = [f"SELECT {i};" for i in range(40)]
    old = VersionResults.read(_results(tmp_path / "old", "1" * 40, refs))
    lost = "0" * 8 + "1" * 32  # 8 answers lost, none won: significant and beyond the 5% margin
    new = VersionResults.read(_results(tmp_path / "new", lost, ["x"] * 8 + refs[8:]))
    assert old is not None and new is not None
    found = compare_versions(new, old)
    assert [f.split(":")[0] for f in found] == ["fine-tuned exact_match", "fine-tuned chrf"]
    assert "8 lost, 0 won" in found[0]
    assert compare_versions(old, old) == []
    # Another held-out split (no example shared): only the margin on the scores.
    other = VersionResults.read(_results(tmp_path / "other", lost, refs, ids=[f"o{i}" for i in range(40)]))
    assert other is not None
    assert compare_versions(other, old) == [
        "fine-tuned exact_match: 0.8 is below 95% of 1 (no shared held-out examples to pair)"
    ]
