from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgeft.core.errors import DataError
from edgeft.data.check import analyse
from edgeft.data.rows import load_examples, require_usable, split

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "nl2sql" / "data" / "nl2sql.jsonl"
CHAT = [{"role": "user", "content": "u"}, {"role": "assistant", "content": "a"}]


def write(path: Path, lines: list[str | dict]) -> Path:
    path.write_text("\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines) + "\n")
    return path


def rows(n: int, start: int = 0) -> list[dict]:
    return [
        {"instruction": f"Say the number {i} in words, please", "output": f"number {i * 7919 % 10007}"}
        for i in range(start, start + n)
    ]


def test_every_format_normalises_to_messages_or_text(tmp_path: Path) -> None:
    f = write(
        tmp_path / "d.jsonl",
        [
            {"instruction": "Say hi", "output": "hi"},
            {"instruction": "Translate", "input": "chat", "output": "cat", "system": "Be brief."},
            {"messages": [{"role": "system", "content": "s"}, *CHAT]},
            {"prompt": "p", "completion": "c"},
        ],
    )
    report = load_examples(f)
    assert not report.findings
    assert [e.messages for e in report.examples] == [
        [{"role": "user", "content": "Say hi"}, {"role": "assistant", "content": "hi"}],
        [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Translate\n\nchat"},
            {"role": "assistant", "content": "cat"},
        ],
        [{"role": "system", "content": "s"}, *CHAT],
        [{"role": "user", "content": "p"}, {"role": "assistant", "content": "c"}],
    ]
    assert dict(report.formats) == {"alpaca": 2, "chat": 1, "prompt-completion": 1}
    text = load_examples(write(tmp_path / "t.jsonl", [{"text": "plain text"}]))
    assert text.examples[0].text == "plain text" and text.examples[0].messages is None


def test_json_csv_parquet_and_datasets_dir_read_the_same_rows(tmp_path: Path) -> None:
    import datasets

    data = [{"question": "What is two?", "answer": "2"}, {"question": "What is three?", "answer": "3"}]
    (tmp_path / "d.json").write_text(json.dumps(data))
    (tmp_path / "d.csv").write_text('question,answer\n"What is two?",2\n"What is three?",3\n')
    ds = datasets.Dataset.from_list(data)
    ds.to_parquet(str(tmp_path / "d.parquet"))
    ds.save_to_disk(str(tmp_path / "saved"))
    columns = {"prompt": "question", "completion": "answer"}
    expected = [
        [{"role": "user", "content": "What is two?"}, {"role": "assistant", "content": "2"}],
        [{"role": "user", "content": "What is three?"}, {"role": "assistant", "content": "3"}],
    ]
    for name in ("d.json", "d.csv", "d.parquet", "saved"):
        report = load_examples(tmp_path / name, columns)
        assert not report.findings, name
        assert [e.messages for e in report.examples] == expected, name
    assert load_examples(tmp_path / "d.csv", columns).examples[1].where == f"{tmp_path / 'd.csv'}:3"
    assert (
        load_examples(tmp_path / "d.parquet", columns).examples[1].where == f"{tmp_path / 'd.parquet'}[row 1]"
    )


def test_malformed_rows_are_reported_with_their_line(tmp_path: Path) -> None:
    f = write(
        tmp_path / "d.jsonl",
        [
            {"instruction": "ok", "output": "fine"},
            '{"instruction": "broken", ',
            {"instruction": "no output"},
            "",
            {"messages": [{"role": "user", "content": "q"}]},
            {"foo": "x"},
            {"instruction": "   ", "output": "y"},
            {"messages": [{"role": "robot", "content": "q"}]},
            {"messages": [{"role": "assistant", "content": "a"}, {"role": "user", "content": "q"}]},
            {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": ""}]},
        ],
    )
    report = load_examples(f)
    assert len(report.examples) == 1
    assert report.problems == [
        f"{f}:2: not valid JSON (Expecting property name enclosed in double quotes at column 27)",
        f"{f}:3: missing 'output' (alpaca rows need instruction, input?, output)",
        f"{f}:5: the conversation must end with an 'assistant' message",
        f"{f}:6: unknown row format (keys: foo); use alpaca (instruction, input?, output), chat (messages), "
        "prompt/completion or text, or map your fields with data.columns",
        f"{f}:7: 'instruction' is only whitespace (alpaca rows need instruction, input?, output)",
        f'{f}:8: messages[0] must be {{"role": system|user|assistant, "content": string}}',
        f"{f}:9: roles out of order at messages[0]: expected 'user', got 'assistant'",
        f"{f}:10: messages[1] (assistant) is empty or only whitespace",
    ]
    assert [x.check for x in report.findings] == [
        "json",
        "format",
        "roles",
        "format",
        "empty",
        "format",
        "roles",
        "empty",
    ]
    with pytest.raises(DataError) as e:
        require_usable(report)
    assert "8 malformed row(s)" in str(e.value) and e.value.exit_code == 4


def test_invalid_utf8_is_reported(tmp_path: Path) -> None:
    f = tmp_path / "d.jsonl"
    f.write_bytes(b'{"instruction": "a", "output": "b"}\n{"instruction": "\xff", "output": "b"}\n')
    assert load_examples(f).problems == [f"{f}:2: not valid UTF-8 (byte 17)"]


def test_too_few_examples(tmp_path: Path) -> None:
    f = write(tmp_path / "d.jsonl", [{"instruction": f"q{i}", "output": "a"} for i in range(3)])
    report = analyse(f)
    assert [(x.check, x.message) for x in report.errors] == [
        ("too-few", "3 usable example(s); at least 10 needed")
    ]


def test_duplicates_near_duplicates_and_leakage(tmp_path: Path) -> None:
    base = rows(12)
    exact = dict(base[2])
    near = {"instruction": "Say the number 5 in words,  please!", "output": base[5]["output"]}
    f = write(tmp_path / "train.jsonl", [*base, exact, near])
    val = write(tmp_path / "val.jsonl", [base[7], *rows(3, start=100)])
    report = analyse(f, validation_path=val)
    found = {(x.severity, x.check, x.where): x.message for x in report.findings}
    assert found[("warning", "duplicate", f"{f}:13")] == f"exact duplicate of {f}:3"
    assert found[("warning", "near-duplicate", f"{f}:14")].startswith(
        f"near-duplicate of {f}:6 (similarity 0.9"
    )
    assert found[("error", "leakage", f"{val}:1")].startswith(
        f"validation example also in the training data ({f}:8)"
    )
    assert len(report.findings) == 3  # rows that only share a template are not near-duplicates
    deduped = analyse(f, validation_path=val, dedup=True)
    assert deduped.info["duplicates_removed"] == 1 and len(deduped.train) == 13


def test_lengths_use_the_models_template(tmp_path: Path, micro_model: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(micro_model)
    long_row = {"instruction": "word " * 200, "output": "x"}
    f = write(tmp_path / "d.jsonl", [*rows(11), long_row])
    report = analyse(f, tokenizer=tok, max_length=128)
    (err,) = report.errors
    n = len(
        tok.apply_chat_template(
            [{"role": "user", "content": long_row["instruction"]}, {"role": "assistant", "content": "x"}],
            tokenize=True,
        )
    )
    assert (err.check, err.where) == ("too-long", f"{f}:12")
    assert err.message == (
        f"{n} tokens under the model's template, over train.max_seq_length 128: shorten it or raise the limit"
    )
    assert report.stats["max"] == n and report.stats["min"] <= report.stats["median"] <= report.stats["p95"]
    assert report.rendered_example.startswith("<s><|im_start|>user\n")


def test_split_is_deterministic_and_disjoint() -> None:
    examples = load_examples(EXAMPLE).examples
    assert len(examples) >= 300
    train, val = split(examples, 0.1, seed=0)
    train2, val2 = split(examples, 0.1, seed=0)
    assert [e.where for e in val] == [e.where for e in val2]
    assert len(val) == 40 and len(train) == 360
    assert not {e.where for e in train} & {e.where for e in val}
    assert [e.where for e in split(examples, 0.1, seed=1)[1]] != [e.where for e in val]


def test_bundled_example_is_reproduced_by_its_generator() -> None:
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, str(EXAMPLE.parent.parent / "generate.py")], capture_output=True, check=True
    ).stdout
    assert out == EXAMPLE.read_bytes()


def test_data_check_with_a_config_checks_what_training_checks(tmp_path: Path, micro_model: Path) -> None:
    """`edgeft data check -c` and training map the data section to the checks in one place: a
    configured near-duplicate threshold is the one both use (the CLI once used 0.9 whatever the
    config said), and the CLI's report equals training's."""
    import yaml
    from click.testing import CliRunner

    from edgeft.cli import cli
    from edgeft.core.config import load_config
    from edgeft.data.check import analyse_config

    def check(threshold: float) -> tuple[dict, dict]:
        path = tmp_path / f"edgeft-{threshold}.yaml"
        path.write_text(
            yaml.safe_dump(
                {
                    "name": "d",
                    "base_model": str(micro_model),
                    "data": {"train": str(EXAMPLE), "near_duplicate_threshold": threshold},
                }
            )
        )
        result = CliRunner().invoke(cli, ["data", "check", "-c", str(path), "--json"])
        assert result.exit_code == 0, result.output
        from transformers import AutoTokenizer

        training = analyse_config(load_config(path), AutoTokenizer.from_pretrained(micro_model)).to_dict()
        return json.loads(result.stdout), training

    strict, strict_training = check(0.99)
    loose, loose_training = check(0.7)
    assert strict == strict_training and loose == loose_training
    found = [sum(f["check"] == "near-duplicate" for f in r["findings"]) for r in (strict, loose)]
    assert found[0] < found[1], found  # more pairs are near at 0.7 than at 0.99
