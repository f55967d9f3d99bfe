from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgeft.data import load_examples, require_usable, split
from edgeft.errors import DataError

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "nl2sql" / "data" / "nl2sql.jsonl"


def write(path: Path, lines: list[str | dict]) -> Path:
    path.write_text("\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines) + "\n")
    return path


def test_alpaca_and_chat_rows_normalise_to_messages(tmp_path: Path) -> None:
    f = write(tmp_path / "d.jsonl", [
        {"instruction": "Say hi", "output": "hi"},
        {"instruction": "Translate", "input": "chat", "output": "cat"},
        {"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "u"},
                      {"role": "assistant", "content": "a"}]},
    ])
    report = load_examples(f)
    assert not report.problems
    assert [e.messages for e in report.examples] == [
        [{"role": "user", "content": "Say hi"}, {"role": "assistant", "content": "hi"}],
        [{"role": "user", "content": "Translate\n\nchat"}, {"role": "assistant", "content": "cat"}],
        [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}, {"role": "assistant", "content": "a"}],
    ]
    assert dict(report.formats) == {"alpaca": 2, "chat": 1}


def test_malformed_rows_are_reported_with_their_line(tmp_path: Path) -> None:
    f = write(tmp_path / "d.jsonl", [
        {"instruction": "ok", "output": "fine"},
        '{"instruction": "broken", ',
        {"instruction": "no output"},
        "",
        {"messages": [{"role": "user", "content": "q"}]},
        {"prompt": "x"},
        {"instruction": "", "output": "y"},
        {"messages": [{"role": "robot", "content": "q"}]},
    ])
    report = load_examples(f)
    assert len(report.examples) == 1
    assert report.problems == [
        f"{f}:2: not valid JSON (Expecting property name enclosed in double quotes at column 27)",
        f"{f}:3: missing 'output' (alpaca rows need instruction, input?, output)",
        f"{f}:5: the last message must be a non-empty 'assistant' turn",
        f"{f}:6: unknown row format (keys: prompt); use alpaca (instruction, input?, output) or chat (messages)",
        f"{f}:7: 'instruction' is empty (alpaca rows need instruction, input?, output)",
        f'{f}:8: messages[0] must be {{"role": system|user|assistant, "content": string}}',
    ]
    with pytest.raises(DataError) as e:
        require_usable(report)
    assert "6 malformed row(s)" in str(e.value) and e.value.exit_code == 4


def test_invalid_utf8_is_reported(tmp_path: Path) -> None:
    f = tmp_path / "d.jsonl"
    f.write_bytes(b'{"instruction": "a", "output": "b"}\n{"instruction": "\xff", "output": "b"}\n')
    assert load_examples(f).problems == [f"{f}:2: not valid UTF-8 (byte 17)"]


def test_too_few_examples(tmp_path: Path) -> None:
    f = write(tmp_path / "d.jsonl", [{"instruction": f"q{i}", "output": "a"} for i in range(3)])
    with pytest.raises(DataError, match="3 usable example"):
        require_usable(load_examples(f))


def test_split_is_deterministic_and_disjoint() -> None:
    rows = load_examples(EXAMPLE).examples
    assert len(rows) >= 300
    train, val = split(rows, 0.1, seed=0)
    train2, val2 = split(rows, 0.1, seed=0)
    assert [e.line for e in val] == [e.line for e in val2]
    assert len(val) == 40 and len(train) == 360
    assert not {e.line for e in train} & {e.line for e in val}
    assert [e.line for e in split(rows, 0.1, seed=1)[1]] != [e.line for e in val]


def test_bundled_example_is_reproduced_by_its_generator() -> None:
    import subprocess
    import sys

    out = subprocess.run([sys.executable, str(EXAMPLE.parent.parent / "generate.py")],
                         capture_output=True, check=True).stdout
    assert out == EXAMPLE.read_bytes()
