"""The CLI's contract: exact exit codes and one-line `Error: ...` messages, no tracebacks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

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
    for command in ("build", "data", "train", "merge", "export", "verify", "package", "tiny-model"):
        assert command in result.output


def test_data_check_clean_file_prints_statistics() -> None:
    result = run("data", "check", str(EXAMPLE_DATA))
    assert result.exit_code == 0
    assert result.stdout.strip() == (f"{EXAMPLE_DATA}: 400 usable rows (400 alpaca), 0 malformed; "
                                     "split 360 train / 40 validation (seed 0)")


def test_data_check_json(tmp_path: Path) -> None:
    result = run("data", "check", str(EXAMPLE_DATA), "--json")
    assert result.exit_code == 0
    assert json.loads(result.stdout)["usable"] == 400


def test_data_check_reports_malformed_rows_and_exits_4(tmp_path: Path) -> None:
    f = tmp_path / "bad.jsonl"
    rows = [json.dumps({"instruction": f"q{i}", "output": "a"}) for i in range(12)]
    rows.insert(3, json.dumps({"instruction": "no answer"}))
    rows.insert(7, "not json")
    f.write_text("\n".join(rows) + "\n")
    result = run("data", "check", str(f))
    assert result.exit_code == 4
    assert f"{f}:4: missing 'output' (alpaca rows need instruction, input?, output)" in result.stderr
    assert f"{f}:8: not valid JSON" in result.stderr
    assert f"Error: {f}: 2 malformed row(s); fix or remove them" in result.stderr
    assert "Traceback" not in result.output


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
    p.write_text("name: x\nbase_model: tiny:micro\ndata: {train: d.jsonl, val_ration: 0.2}\n"
                 "train: {epoch: 2, batch_size: many}\n")
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
    assert result.stderr == (f"Error: {tmp_path / 'empty'}: not a complete edgeft stage (no edgeft.json): "
                             "run `edgeft train -c CONFIG` first\n")


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
