"""Preference pairs (edgeft.data.pairs), the align section of the config, and preference scoring's
arithmetic: no model is trained here."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import EXAMPLE

from edgeft.cli import cli
from edgeft.core.config import ConfigError, parse_config
from edgeft.data import pairs
from edgeft.data.rows import _Bad
from edgeft.pipeline.evaluate.preference import answer_logprob

USER = {"role": "user", "content": "q"}


def _rows(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def _pairs(n: int, prefix: str = "question") -> list[dict]:
    return [{"prompt": f"{prefix} {i}", "chosen": f"right {i}", "rejected": f"wrong {i}"} for i in range(n)]


@pytest.mark.parametrize(
    "row",
    [
        {"prompt": "q", "chosen": "a", "rejected": "b"},
        {"prompt": [USER], "chosen": [{"role": "assistant", "content": "a"}], "rejected": "b"},
        {
            "chosen": [USER, {"role": "assistant", "content": "a"}],
            "rejected": [USER, {"role": "assistant", "content": "b"}],
        },
    ],
    ids=["text", "conversational", "implicit-prompt"],
)
def test_trls_preference_formats_become_one_pair(row: dict) -> None:
    pair = pairs.to_pair(row)
    assert (pair.prompt, pair.chosen, pair.rejected) == ([USER], "a", "b")
    assert pairs.Pair.from_json(pair.to_json()) == pair  # the stage's own file reads back


def test_a_system_turn_is_added_as_the_sft_rows_get_it() -> None:
    assert pairs.to_pair({"prompt": "q", "chosen": "a", "rejected": "b", "system": "s"}).prompt[0] == {
        "role": "system",
        "content": "s",
    }
    filled = pairs.to_pair({"prompt": "q", "chosen": "a", "rejected": "b", "db": "hr"}, "Schema {db}.")
    assert filled.prompt[0]["content"] == "Schema hr."


@pytest.mark.parametrize(
    ("row", "check", "words"),
    [
        ({"prompt": "q", "chosen": "a ", "rejected": " a"}, "same-answer", "the same answer"),
        ({"prompt": "q", "chosen": "a"}, "format", "not a preference pair"),
        ({"prompt": "", "chosen": "a", "rejected": "b"}, "empty", "'prompt' is empty"),
        ({"chosen": "a", "rejected": "b"}, "format", "missing 'prompt'"),
        (
            {
                "chosen": [USER, {"role": "assistant", "content": "a"}],
                "rejected": [{"role": "user", "content": "other"}, {"role": "assistant", "content": "b"}],
            },
            "format",
            "differ before their last turn",
        ),
        ({"prompt": "q", "chosen": [USER], "rejected": "b"}, "roles", "must end with an 'assistant'"),
    ],
)
def test_a_bad_pair_is_named(row: dict, check: str, words: str) -> None:
    with pytest.raises(_Bad) as e:
        pairs.to_pair(row)
    assert e.value.check == check and words in str(e.value)


def test_findings_carry_file_and_line(tmp_path: Path) -> None:
    path = _rows(
        tmp_path / "p.jsonl",
        [*_pairs(12), "{not json", {"prompt": "q", "chosen": "x", "rejected": "x"}, _pairs(1)[0]],
    )
    report = pairs.analyse(path)
    got = {(f.where, f.check, f.severity) for f in report.findings}
    assert (f"{path}:13", "json", "error") in got
    assert (f"{path}:14", "same-answer", "error") in got
    assert (f"{path}:15", "duplicate", "warning") in got
    with pytest.raises(Exception, match="preference pair error"):
        report.raise_on_errors()


def test_the_split_keeps_a_prompts_pairs_together_and_is_deterministic(tmp_path: Path) -> None:
    rows = [{"prompt": f"q{i // 3}", "chosen": f"a{i}", "rejected": f"b{i}"} for i in range(60)]
    report = pairs.analyse(_rows(tmp_path / "p.jsonl", rows), val_ratio=0.2, seed=3)
    train_prompts = {p.prompt_key() for p in report.train}
    assert report.validation and not any(p.prompt_key() in train_prompts for p in report.validation)
    assert len(report.validation) == 12  # whole groups of 3 up to the 20% asked for
    again = pairs.analyse(_rows(tmp_path / "p.jsonl", rows), val_ratio=0.2, seed=3)
    assert [p.where for p in again.validation] == [p.where for p in report.validation]


def test_leakage_into_the_held_out_splits_is_an_error(tmp_path: Path) -> None:
    train = _rows(tmp_path / "t.jsonl", _pairs(12))
    val = _rows(tmp_path / "v.jsonl", _pairs(2))  # both also training pairs
    report = pairs.analyse(
        train,
        validation_path=val,
        held_out=[[{"role": "user", "content": "question 5"}, {"role": "assistant", "content": "x"}]],
    )
    leaks = [f for f in report.errors if f.check == "leakage"]
    assert {f.where for f in leaks} == {f"{val}:1", f"{val}:2", f"{train}:6"}
    assert "eval scores" in next(f.message for f in leaks if f.where == f"{train}:6")


def test_too_few_pairs_and_too_long_pairs_are_errors(tmp_path: Path, micro_model: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(micro_model)
    rows = _pairs(10) + [{"prompt": "q " * 200, "chosen": "a", "rejected": "b"}]
    report = pairs.analyse(_rows(tmp_path / "p.jsonl", rows), tokenizer=tok, max_length=64)
    assert [f.where for f in report.errors if f.check == "too-long"] == [f"{tmp_path / 'p.jsonl'}:11"]
    assert "align.max_length 64" in str(report.errors[0])
    few = pairs.analyse(_rows(tmp_path / "f.jsonl", _pairs(3)))
    assert any(f.check == "too-few" for f in few.errors)


def test_data_check_reads_a_pairs_file_and_exits_4_on_errors(tmp_path: Path) -> None:
    good = CliRunner().invoke(cli, ["data", "check", str(EXAMPLE / "data" / "nl2sql-pairs.jsonl")])
    assert good.exit_code == 0, good.output
    assert "300 usable preference pair(s) of 300 rows; 0 error(s)" in good.output
    bad = _rows(tmp_path / "bad.jsonl", [*_pairs(11), {"prompt": "q", "chosen": "a", "rejected": "a"}])
    result = CliRunner().invoke(cli, ["data", "check", str(bad)])
    assert result.exit_code == 4
    assert f"{bad}:12: chosen and rejected are the same answer" in result.output


def test_the_example_pairs_ask_what_the_sft_rows_do_not() -> None:
    """The bundled pairs are what generate.py writes, and no pair's question is an SFT row's (so none
    can be one of the held-out examples eval scores, whatever the split)."""
    script = EXAMPLE / "generate.py"
    made = subprocess.run([sys.executable, str(script), "pairs"], capture_output=True, text=True, check=True)
    assert made.stdout == (EXAMPLE / "data" / "nl2sql-pairs.jsonl").read_text()
    sft = {json.loads(line)["input"] for line in (EXAMPLE / "data" / "nl2sql.jsonl").read_text().splitlines()}
    asked = {json.loads(line)["prompt"].split("\n\n", 1)[1] for line in made.stdout.splitlines()}
    assert len(asked) == 300 and not asked & sft


def test_align_keys_need_pairs_and_take_trls_losses() -> None:
    base = {"name": "x", "base_model": "tiny:micro", "data": {"train": "d.jsonl"}}
    with pytest.raises(ConfigError, match="align.beta: preference tuning is off without align.pairs"):
        parse_config(base | {"align": {"beta": 0.2}})
    with pytest.raises(ConfigError, match="align.loss_type: 'orpo' is not one of sigmoid"):
        parse_config(base | {"align": {"pairs": "p.jsonl", "loss_type": "orpo"}})
    cfg = parse_config(base | {"align": {"pairs": "p.jsonl"}, "train": {"max_seq_length": 300}})
    assert cfg.aligned and cfg.align.learning_rate == 5e-5 and cfg.align.max_length == 300
    full = parse_config(base | {"align": {"pairs": "p.jsonl"}, "train": {"method": "full"}})
    assert full.align.learning_rate == 5e-7
    assert not parse_config(base).aligned
    with pytest.raises(
        ConfigError, match=r"train.method: 'dpo' is preference tuning.*add align: \{pairs: FILE\}"
    ):
        parse_config(base | {"train": {"method": "dpo"}})


def test_edgefts_loss_list_is_trls() -> None:
    """align.loss_type's choices are the losses the pinned trl's DPOConfig documents."""
    import re

    from trl import DPOConfig

    from edgeft.core.config import DPO_LOSSES

    documented = DPOConfig.__dataclass_fields__["loss_type"].metadata["help"]
    assert set(DPO_LOSSES) == set(re.findall(r"`'([a-z_]+)'`", documented)) - {"sft"}


def test_an_answers_log_probability_is_summed_after_the_prompt() -> None:
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((6, 11)).astype(np.float32)
    ids = [1, 4, 2, 7, 3, 9]
    logp = logits - np.log(np.exp(logits.astype(np.float64)).sum(axis=1, keepdims=True))
    want = sum(logp[t - 1, ids[t]] for t in range(3, 6))
    assert answer_logprob(logits, ids, 3) == pytest.approx(want, abs=1e-9)


def test_served_feedback_becomes_pairs_with_counts(tmp_path: Path) -> None:
    """Corrections and different ratings of one prompt become pairs; everything else is counted."""
    from edgeft.serve import journal

    folder = tmp_path / "served"
    journal.prepare(folder)
    log = journal.Journal(folder, 1 << 20)

    def answered(n: int, question: str, reply: str, status: str = "ok") -> None:
        msgs = [{"role": "user", "content": question}]
        log.completion({"id": f"c{n}", "version": "m:1", "status": status, "messages": msgs, "reply": reply})

    for i in range(12):  # corrected answers: 12 pairs
        answered(i, f"question {i}", f"wrong {i}")
        log.feedback(f"c{i}", 1, f"right {i}")
    answered(20, "asked thrice", "best")  # rated 5, 2 and 5: best over the 2, one left over
    answered(21, "asked thrice", "worse")
    answered(22, "asked thrice", "best again")
    for n, rating in ((20, 5), (21, 2), (22, 5)):
        log.feedback(f"c{n}", rating, None)
    answered(30, "asked once", "fine")
    log.feedback("c30", 4, None)
    answered(31, "no verdict", "x")
    answered(32, "cut off", "y", status="disconnected")
    log.close()
    report = pairs.analyse(folder, val_ratio=0.1)
    assert not report.errors, report.errors
    got = {(p.prompt[-1]["content"], p.chosen, p.rejected) for p in report.train + report.validation}
    assert ("question 3", "right 3", "wrong 3") in got
    assert ("asked thrice", "best", "worse") in got and len(got) == 13
    assert report.info["from_served_log"] == {
        "completions": 18,
        "with_feedback": 16,
        "pairs_from_corrections": 12,
        "pairs_from_ratings": 1,
        "dropped_not_answered_in_full": 1,
        "dropped_content_not_logged": 0,
        "dropped_no_feedback": 1,
        "dropped_prompt_answered_once": 1,
        "dropped_no_rating_difference": 1,
    }
    result = CliRunner().invoke(cli, ["data", "check", str(folder), "--pairs"])
    assert result.exit_code == 0, result.output
    assert (
        "18 logged completion(s), 16 with feedback; paired 12 from corrections and 1 from ratings"
        in result.output
    )
    assert "1 (no feedback)" in result.output


def test_data_check_of_a_config_checks_its_pairs_against_the_held_out_split(tmp_path: Path) -> None:
    """-c checks align.pairs too, and a pair asking one of the SFT split's held-out questions is a
    leak: eval would score what preference tuning trained on."""
    rows = [{"prompt": f"question {i}", "completion": f"answer {i}"} for i in range(20)]
    data = _rows(tmp_path / "sft.jsonl", rows)
    config = tmp_path / "edgeft.yaml"
    config.write_text(
        f"name: x\nbase_model: tiny:micro\ndata: {{train: {data}, val_ratio: 0.5}}\n"
        f"align: {{pairs: {_rows(tmp_path / 'p.jsonl', _pairs(20))}}}\n"
    )
    result = CliRunner().invoke(cli, ["data", "check", "-c", str(config)])
    assert result.exit_code == 4, result.output
    assert "its prompt is one of the held-out examples eval scores" in result.output
    assert "20 usable preference pair(s) of 20 rows" in result.output


def test_align_refuses_a_config_without_pairs_and_several_processes(tmp_path: Path, monkeypatch) -> None:
    config = tmp_path / "edgeft.yaml"
    config.write_text("name: x\nbase_model: tiny:micro\ndata: {train: d.jsonl}\n")
    result = CliRunner().invoke(cli, ["align", "-c", str(config)])
    assert result.exit_code == 3 and "align.pairs: not set" in result.output, result.output
    config.write_text("name: x\nbase_model: tiny:micro\ndata: {train: d.jsonl}\nalign: {pairs: p.jsonl}\n")
    monkeypatch.setenv("WORLD_SIZE", "2")
    result = CliRunner().invoke(cli, ["align", "-c", str(config)])
    assert result.exit_code == 3 and "runs in one process" in result.output, result.output
