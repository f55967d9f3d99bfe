"""The CLI's contract: exact exit codes and one-line `Error: ...` messages, no tracebacks."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgeft.cli import cli

EXAMPLE_DATA = Path(__file__).resolve().parent.parent / "examples" / "nl2sql" / "data" / "nl2sql.jsonl"


def run(*args: str):
    return CliRunner().invoke(cli, list(args))


def test_help_is_instant_and_lists_every_stage() -> None:
    # Heavy libraries are imported inside commands, so --help must not load torch.
    code = "import sys; from edgeft.cli import cli; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
    result = run("--help")
    assert result.exit_code == 0
    for command in ("build", "data", "train", "merge", "export", "verify", "eval", "package", "tiny-model"):
        assert command in result.output


def test_data_check_clean_file_prints_statistics() -> None:
    result = run("data", "check", str(EXAMPLE_DATA))
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["severity", "check", "where", "message"]
    # The example is generated from templates: rows one digit apart are near-duplicates (warnings).
    assert (
        f"{EXAMPLE_DATA}: 400 usable of 400 rows (400 alpaca); 0 error(s), 129 warning(s); "
        "split 360 train / 40 validation" in lines
    )


def test_data_check_json() -> None:
    result = run("data", "check", str(EXAMPLE_DATA), "--json")
    assert result.exit_code == 0
    report = json.loads(result.stdout)
    assert (report["usable"], report["train_rows"], report["errors"]) == (400, 360, 0)


def test_data_check_reports_every_defect_with_its_location(tmp_path: Path) -> None:
    f = tmp_path / "bad.jsonl"
    good = [
        {"instruction": f"Spell the number {i} for me", "output": f"value {i * 7919 % 10007}"}
        for i in range(12)
    ]
    lines = [json.dumps(r) for r in good]
    lines.insert(3, json.dumps({"instruction": "no answer"}))  # line 4
    lines.insert(7, "not json")  # line 8
    lines.append(
        json.dumps({"messages": [{"role": "assistant", "content": "a"}, {"role": "user", "content": "q"}]})
    )  # line 15
    lines.append(json.dumps({"messages": [{"role": "user", "content": "q"}]}))  # line 16
    lines.append(json.dumps({"instruction": "   ", "output": "x"}))  # line 17
    lines.append(json.dumps(good[0]))  # line 18
    lines.append(json.dumps({"instruction": "Spell the number 1 for me!", "output": good[1]["output"]}))  # 19
    lines.append(json.dumps({"instruction": "long " * 300, "output": "x"}))  # line 20
    f.write_bytes(("\n".join(lines) + "\n").encode() + b'{"instruction": "\xff", "output": "b"}\n')  # 21
    val = tmp_path / "val.jsonl"
    val.write_text(json.dumps(good[5]) + "\n" + json.dumps({"instruction": "fresh", "output": "row"}) + "\n")
    result = run(
        "data",
        "check",
        str(f),
        "--validation",
        str(val),
        "--model",
        "tiny:micro",
        "--max-length",
        "256",
        "--json",
    )
    assert result.exit_code == 4
    found = {(x["severity"], x["check"], x["where"]) for x in json.loads(result.stdout)["findings"]}
    assert found == {
        ("error", "format", f"{f}:4"),
        ("error", "json", f"{f}:8"),
        ("error", "roles", f"{f}:15"),
        ("error", "roles", f"{f}:16"),
        ("error", "empty", f"{f}:17"),
        ("warning", "duplicate", f"{f}:18"),
        ("warning", "near-duplicate", f"{f}:19"),
        ("error", "too-long", f"{f}:20"),
        ("error", "encoding", f"{f}:21"),
        ("error", "leakage", f"{val}:1"),
    }
    assert result.stderr.endswith(f"Error: {f}: 8 error(s) in the data\n")
    table = run("data", "check", str(f), "--validation", str(val))
    assert table.exit_code == 4
    assert any(
        line.startswith("error") and f"{f}:4" in line and "missing 'output'" in line
        for line in table.stdout.splitlines()
    )
    assert "Traceback" not in table.output


def test_missing_data_file_exits_5(tmp_path: Path) -> None:
    result = run("data", "check", str(tmp_path / "nope.jsonl"))
    assert result.exit_code == 5
    assert result.stderr == f"Error: {tmp_path / 'nope.jsonl'}: data file not found\n"


def test_missing_config_exits_5(tmp_path: Path) -> None:
    result = run("build", "-c", str(tmp_path / "edgeft.yaml"))
    assert result.exit_code == 5
    assert result.stderr == f"Error: {tmp_path / 'edgeft.yaml'}: config file not found\n"


def test_config_with_several_bad_keys_reports_all_and_exits_3(tmp_path: Path) -> None:
    p = tmp_path / "edgeft.yaml"
    p.write_text(
        "name: x\nbase_model: tiny:micro\ndata: {train: d.jsonl, val_ration: 0.2}\n"
        "train: {epoch: 2, batch_size: many}\n"
    )
    result = run("train", "-c", str(p))
    assert result.exit_code == 3
    assert result.stderr == (
        f"Error: {p.resolve()}: 3 problems\n"
        "  - unknown key 'data.val_ration' (did you mean 'val_ratio'?)\n"
        "  - unknown key 'train.epoch' (did you mean 'epochs'?)\n"
        "  - train.batch_size: expected int, got 'many'\n"
    )


def test_bad_set_override_exits_3(tmp_path: Path) -> None:
    p = tmp_path / "edgeft.yaml"
    p.write_text("name: x\nbase_model: tiny:micro\ndata: {train: d.jsonl}\n")
    result = run("train", "-c", str(p), "--set", "train.max_steps")
    assert result.exit_code == 3
    assert result.stderr == "Error: --set 'train.max_steps': expected KEY=VALUE\n"


def test_wrong_stage_directory_exits_5(tmp_path: Path) -> None:
    p = tmp_path / "edgeft.yaml"
    p.write_text(f"name: x\nbase_model: tiny:micro\ndata: {{train: {EXAMPLE_DATA}}}\n")
    (tmp_path / "empty").mkdir()
    result = run("merge", "-c", str(p), "--train-dir", str(tmp_path / "empty"))
    assert result.exit_code == 5
    assert result.stderr == (
        f"Error: {tmp_path / 'empty'}: not a complete edgeft stage (no edgeft.json): "
        "run `edgeft train -c CONFIG` first\n"
    )


def test_unknown_tiny_size_exits_3(tmp_path: Path) -> None:
    p = tmp_path / "edgeft.yaml"
    p.write_text(f"name: x\nbase_model: tiny:huge\ndata: {{train: {EXAMPLE_DATA}}}\n")
    result = run("train", "-c", str(p))
    assert result.exit_code == 3
    assert result.stderr.startswith("Error: base_model: 'tiny:huge' is not tiny:<size>[:<seed>]")


def test_existing_output_without_force_exits_5(tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    result = run("tiny-model", str(tmp_path / "m"))
    assert result.exit_code == 5
    assert result.stderr == f"Error: {tmp_path / 'm'} already exists: choose another path or pass --force\n"


def test_every_hint_names_a_real_command() -> None:
    from edgeft.core.stages import ORDER, PRODUCED_BY

    for kind, hint in PRODUCED_BY.items():
        words = hint.split()[1:]
        command = words[:2] if words[0] in ("export", "data") else words[:1]
        result = run(*command, "--help")
        assert result.exit_code == 0, f"{kind}: `{hint}`"
        for option in (w for w in words if w.startswith("-")):
            assert option in result.output, f"{kind}: `{hint}`: no option {option}"
    assert set(PRODUCED_BY) == set(ORDER)


@pytest.mark.parametrize(
    ("command", "error"),
    [(("verify",), "VerifyFailed"), (("eval",), "EvalFailed"), (("data", "check"), "DataError")],
)
def test_exit_codes_named_in_help_are_the_errors_codes(command: tuple[str, ...], error: str) -> None:
    import edgeft.core.errors

    said = re.findall(r"[Ee]xits? (\d+)", " ".join(run(*command, "--help").output.split()))
    assert said == [str(getattr(edgeft.core.errors, error).exit_code)]
