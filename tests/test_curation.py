"""From conversation logs to training data: data.filter (a small expression language, never
Python's eval) with its per-condition counts, a system prompt filled from each row, and
augmentation of the training split: typos (seeded, reproducible byte for byte) and paraphrases by
a local model (SmolLM2-135M-Instruct), each checked and counted."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import EXAMPLE

from edgeft.cli import cli
from edgeft.core.errors import ConfigError
from edgeft.core.rowfilter import compile_filter
from edgeft.data.check import analyse
from edgeft.data.rows import load_examples

CONDITIONS = "rating >= 4 and latency_ms < 5000 and len(answer) > 50 and not edited"


def log_rows() -> list[dict]:
    """A log as an application writes it: 40 rows, each failing at most one condition, in a known mix."""
    rows = []
    for i in range(40):
        row = {
            "question": f"How many orders were placed in week {i}?",
            "answer": f"SELECT COUNT(*) FROM orders WHERE week = {i}; -- counts every order of the week",
            "rating": 5,
            "latency_ms": 900,
            "edited": False,
            "context": {"shop": f"shop-{i % 3}"},
        }
        kind = i % 8
        if kind == 1:
            row["rating"] = 2  # removed by the first condition
        elif kind == 2:
            del row["rating"]  # absent: an order comparison with null is false
        elif kind == 3:
            row["latency_ms"] = 7000
        elif kind == 4:
            row["answer"] = f"SELECT {i};"  # too short; also the kind the guide calls not substantive
        elif kind == 5:
            row["edited"] = True
        rows.append(row)
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_filter_counts_what_each_condition_removed(tmp_path: Path) -> None:
    rows = log_rows()
    log = write_jsonl(tmp_path / "log.jsonl", rows)
    columns = {"prompt": "question", "completion": "answer"}
    report = analyse(log, columns=columns, row_filter=CONDITIONS)
    counts = report.info["filter"]["train"]
    assert report.info["filter"]["conditions"] == [
        "rating >= 4",
        "latency_ms < 5000",
        "len(answer) > 50",
        "not edited",
    ]
    # 5 rows of each failing kind; kinds 1 and 2 both fail the first condition.
    assert [r["rows"] for r in counts["removed_by"]] == [10, 5, 5, 5]
    assert counts == counts | {"rows": 40, "kept": 15, "dropped": 25, "missing_fields": {"rating": 5}}
    assert len(report.train) + len(report.validation) == 15
    assert all(e.messages[-1]["content"].endswith("of the week") for e in report.train)

    # CSV gives every value as text: "4" compares as a number, "False" as a boolean.
    with (tmp_path / "log.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["question", "answer", "rating", "latency_ms", "edited"])
        writer.writeheader()
        for r in rows:
            writer.writerow({k: r.get(k, "") for k in writer.fieldnames})
    as_csv = analyse(tmp_path / "log.csv", columns=columns, row_filter=CONDITIONS).info["filter"]["train"]
    assert as_csv["kept"] == 15 and as_csv["removed_by"] == counts["removed_by"]

    # The pseudo-field `reply` (the last assistant turn, any row format), nested fields, in / lower().
    loaded = load_examples(
        log,
        columns,
        row_filter=compile_filter(
            ["len(reply) > 50", "context.shop in ['shop-0', 'shop-1']", "'count' in lower(answer)"]
        ),
    )
    # 5 short answers; then 12 of the other 35 rows are shop-2 (i % 3 == 2); every answer says COUNT.
    assert loaded.filter is not None and loaded.filter.removed == [5, 12, 0] and loaded.filter.kept == 23


def test_data_check_prints_the_funnel_and_refuses_what_is_not_the_language(tmp_path: Path) -> None:
    log = write_jsonl(tmp_path / "log.jsonl", log_rows())
    args = ["data", "check", str(log), "--column", "prompt=question", "--column", "completion=answer"]
    result = CliRunner().invoke(cli, [*args, "--filter", "rating >= 4", "--filter", "not edited"])
    assert result.exit_code == 0, result.output
    assert f"data.filter on {log}: kept 25 of 40 rows" in result.stdout
    assert (
        "rating >= 4  removed 10" in result.stdout
        and "field 'rating' absent or null in 5 row(s)" in result.stdout
    )
    data = json.loads(CliRunner().invoke(cli, [*args, "--filter", "rating > 4", "--json"]).stdout)
    assert data["filter"]["train"]["kept"] == 30

    for text, why in [
        ("__import__('os').system('true')", "calling"),
        ("rating ** 2 > 1", "not part of a filter"),
        ("answer.upper() == 'X'", "calling"),
        ("rating >=", "is not a condition"),
        ("[x for x in answer]", "not part of a filter"),
        ("lower(answer, 1) == 'x'", "one argument"),
    ]:
        result = CliRunner().invoke(cli, [*args, "--filter", text])
        assert result.exit_code == 3, (text, result.output)
        assert (
            result.stderr.startswith("Error: --filter[0]: ")
            and why in result.stderr
            and result.stderr.count("\n") == 1
        )
    with pytest.raises(ConfigError, match=r"data.filter\[1\]: 'x\(\)'"):
        from edgeft.core.config import parse_config

        parse_config(
            {
                "name": "m",
                "base_model": "tiny:micro",
                "data": {"train": "x.jsonl", "filter": ["rating > 1", "x()"]},
            }
        )


def test_filter_drops_all_rows_says_so(tmp_path: Path) -> None:
    log = write_jsonl(tmp_path / "log.jsonl", log_rows())
    report = analyse(log, columns={"prompt": "question", "completion": "answer"}, row_filter="rating > 10")
    (error,) = report.errors
    assert "0 usable example(s)" in error.message and "data.filter kept 0 of 40 rows" in error.message


def test_system_prompt_filled_from_each_row(tmp_path: Path) -> None:
    rows = log_rows()[:12]
    rows[3]["context"] = {}  # this row cannot fill the placeholder: a located error, not a blank
    log = write_jsonl(tmp_path / "log.jsonl", rows)
    prompt = 'You answer for {context.shop}. Reply as {"sql": ...}; literal {{braces}}.'
    report = load_examples(log, {"prompt": "question", "completion": "answer"}, system_prompt=prompt)
    assert [f"{f.where}: {f.message}" for f in report.findings] == [
        f"{log}:4: data.system_prompt needs {{context.shop}}, which this row lacks (or is empty)"
    ]
    first = report.examples[0].messages[0]
    assert first == {
        "role": "system",
        "content": 'You answer for shop-0. Reply as {"sql": ...}; literal {braces}.',
    }
    assert report.examples[1].messages[0]["content"].startswith("You answer for shop-1.")


def test_typo_augmentation_is_reproducible_and_keeps_what_must_stay_exact(tmp_path: Path) -> None:
    from edgeft.core.config import AugmentConfig
    from edgeft.data.augment import noisy, with_typos
    from edgeft.data.rows import write_jsonl

    data = EXAMPLE / "data" / "nl2sql.jsonl"

    def split_bytes(seed: int, name: str) -> tuple[bytes, dict]:
        report = analyse(data, augment=AugmentConfig(typos=2, typo_rate=0.05, seed=seed))
        write_jsonl(tmp_path / name, report.train)
        return (tmp_path / name).read_bytes(), report.to_dict()

    first, record = split_bytes(0, "a.jsonl")
    again, _ = split_bytes(0, "b.jsonl")
    other, _ = split_bytes(1, "c.jsonl")
    assert first == again and first != other  # the same bytes from the same data and seed
    typos = record["augmentation"]["typos"]
    # 2 copies of 360 rows; a short question may draw no edit at 5% a letter (dropped as unchanged).
    assert record["augmented_rows"] == typos["rows_added"] > 400
    assert typos["rows_added"] + sum(typos["dropped"].values()) == 720
    rows = [json.loads(line) for line in first.decode().splitlines()]
    plain = {json.dumps(r["messages"]) for r in rows if "augmented" not in r}
    assert len(plain) == record["train_rows"] - record["augmented_rows"]
    marked = [r for r in rows if r.get("augmented") == "typos"]
    assert len(marked) == typos["rows_added"] and all(r["source"].startswith(f"{data}:") for r in marked)
    instruction = "Convert the following natural language query into a SQL statement.\n\n"
    for r in marked:  # only what the user typed changes: the instruction and the answer are the source's
        answer = r["messages"][1]["content"]
        assert answer.startswith("SELECT") and any(answer == json.loads(p)[1]["content"] for p in plain)
        assert r["messages"][0]["content"].startswith(instruction)
    # The validation split is the plain split's: never augmented.
    assert analyse(data).validation == analyse(data, augment=AugmentConfig(typos=2)).validation

    import random

    text = "Find employees in Oslo hired before 2008 with title 'Senior Engineer' or \"VP\" please."
    for seed in range(50):
        out = noisy(text, 0.3, random.Random(seed))
        for exact in ("Oslo", "2008", "'Senior Engineer'", '"VP"'):
            assert exact in out, (seed, out)
    assert sum(noisy(text, 0.3, random.Random(s)) != text for s in range(50)) == 50
    assert with_typos([], 1, 0.05, 0)[1]["rows_added"] == 0


def test_paraphrase_checks_drop_what_changes_the_answer() -> None:
    from edgeft.data.paraphrase import clean, failed_check

    source = "Which departments have a budget above 1000000 in 'North Wing' for Alice?"
    assert (
        failed_check(source, "What departments in 'North Wing' have budgets over 1000000 for Alice?") is None
    )
    assert failed_check(source, "Alice: departments in 'North Wing' with a budget over 1000000?") is None
    for rewrite, reason in [
        ("  ", "empty"),
        ('""', "empty"),
        ("which departments have a budget  above 1000000 in 'North Wing' for alice?", "unchanged"),
        (
            "Which departments in 'North Wing' have a budget above 100,000 for Alice?",
            "changed-facts",
        ),  # number
        ("Which departments have a budget above 1000000 in North Wing for Alice?", "changed-facts"),  # quote
        ("Which departments have a budget above 1000000 in 'North Wing' for Bob?", "changed-facts"),  # name
        (
            "Which of the 3 departments have a budget above 1000000 in 'North Wing' for Alice?",
            "changed-facts",
        ),
        (
            "Which departments have a budget above 1000000 in 'North Wing' for Alice?\nAnswer: Sales",
            "too-long",
        ),
        (
            "The departments with budgets above 1000000 in 'North Wing' for Alice are " + "Sales, " * 20,
            "too-long",
        ),
    ]:
        assert failed_check(source, clean(rewrite)) == reason, rewrite
    assert clean('Rewrite: "What is the salary of Alice?"') == "What is the salary of Alice?"


def test_paraphrases_by_the_base_model_are_checked_marked_and_reproducible(
    tmp_path: Path, smollm2: Path
) -> None:
    """SmolLM2-135M-Instruct paraphrases the questions of 16 rows of the example (greedy, then
    sampled twice): every kept copy passed the checks and keeps its source's instruction and
    answer, the counts add up, nothing reaches the validation split, and the same settings give
    the same bytes again (the cache cleared in between)."""
    import shutil

    from edgeft.core.config import AugmentConfig
    from edgeft.core.paths import cache_dir
    from edgeft.data.paraphrase import failed_check
    from edgeft.data.rows import write_jsonl as write_split

    data = write_jsonl(
        tmp_path / "rows.jsonl",
        [json.loads(line) for line in (EXAMPLE / "data" / "nl2sql.jsonl").read_text().splitlines()][:16],
    )
    model = ("smollm2:135m-instruct", str(smollm2))

    def run(augment: AugmentConfig, name: str) -> tuple[bytes, dict]:
        shutil.rmtree(cache_dir() / "paraphrases", ignore_errors=True)
        report = analyse(data, augment=augment, paraphraser=model)
        write_split(tmp_path / name, report.train)
        return (tmp_path / name).read_bytes(), report.to_dict()

    greedy, record = run(AugmentConfig(paraphrases=1), "greedy.jsonl")
    p = record["augmentation"]["paraphrases"]
    assert (
        p["candidates"] == 14 and p["rows_added"] + sum(p["dropped"].values()) == 14
    )  # the 14 training rows
    assert record["augmented_rows"] == p["rows_added"] >= 1 and not p["cached"]
    rows = [json.loads(line) for line in greedy.decode().splitlines()]
    sources = {
        f"{data}:{i + 1}": r for i, r in enumerate(json.loads(line) for line in data.read_text().splitlines())
    }
    marked = [r for r in rows if r.get("augmented") == "paraphrase"]
    assert len(marked) == p["rows_added"]
    for r in marked:
        source = sources[r["source"]]
        user, answer = (m["content"] for m in r["messages"])
        assert answer == source["output"] and user.startswith(source["instruction"] + "\n\n")
        assert failed_check(source["input"], user.split("\n\n", 1)[1]) is None
    assert run(AugmentConfig(paraphrases=1), "again.jsonl")[0] == greedy
    assert analyse(data, augment=AugmentConfig(paraphrases=1), paraphraser=model).to_dict()["augmentation"][
        "paraphrases"
    ]["cached"]  # data check, then the build: generated once

    sampled = AugmentConfig(paraphrases=2, paraphrase_temperature=0.8, seed=3)
    first, record = run(sampled, "sampled.jsonl")
    assert record["augmentation"]["paraphrases"]["candidates"] == 28
    assert run(sampled, "sampled-again.jsonl")[0] == first != greedy
    assert analyse(data).validation == analyse(data, augment=sampled, paraphraser=model).validation


def test_paraphrase_config_is_checked(tmp_path: Path) -> None:
    from edgeft.core.config import parse_config

    base = {"name": "p", "base_model": "tiny:micro", "data": {"train": "rows.jsonl"}}
    with pytest.raises(ConfigError, match="paraphrase_temperature"):
        parse_config(base | {"data": {"train": "rows.jsonl", "augment": {"paraphrases": 2}}})
    with pytest.raises(ConfigError, match="data.augment.paraphrases: -1"):
        parse_config(base | {"data": {"train": "rows.jsonl", "augment": {"paraphrases": -1}}})
    assert parse_config(
        base | {"data": {"train": "rows.jsonl", "augment": {"paraphrases": 2, "paraphrase_temperature": 0.7}}}
    )
