"""A user's mistake is never a traceback: each gets `Error: …` naming the key or file, and its
documented exit code (3 config, 4 data, 5 input), before any heavy work starts."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import EXAMPLE, write_config

from edgeft.cli import cli

DATA = str(EXAMPLE / "data" / "nl2sql.jsonl")


def run(*args: str):
    return CliRunner().invoke(cli, list(args))


def _no_traceback(result) -> None:
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output


def _config(tmp_path: Path, **top) -> Path:
    sections = {
        "name": "x",
        "base_model": "tiny:micro",
        "workdir": str(tmp_path / "runs"),
        "data": {"train": DATA},
    }
    for key, value in top.items():
        section, _, field = key.partition("__")
        if field:
            sections.setdefault(section, {})[field] = value
        else:
            sections[section] = value
    return write_config(tmp_path / "edgeft.yaml", **sections)


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ({"train__gradient_accumulation": 0}, "train.gradient_accumulation: 0 must be at least 1"),
        ({"train__lora_dropout": 1.5}, "train.lora_dropout: 1.5 must be in [0, 1)"),
        ({"train__logging_steps": 0}, "train.logging_steps: 0 must be at least 1"),
        ({"train__warmup_ratio": 2}, "train.warmup_ratio: 2.0 must be in [0, 1)"),
        ({"data__near_duplicate_threshold": 5}, "data.near_duplicate_threshold: 5.0 must be in (0, 1]"),
        ({"train__epochs": 0}, "train.epochs: 0 trains nothing"),
        ({"train__max_seq_length": 0}, "train.max_seq_length: 0 must be at least 16"),
        ({"name": "-rf"}, "name: '-rf' must start with an ASCII letter or digit"),
        ({"name": "modèle"}, "name: 'modèle' must start with an ASCII letter or digit"),
        (
            {"train__early_stopping_threshold": -1},
            "train.early_stopping_threshold: -1.0 must not be negative",
        ),
    ],
)
def test_bad_values_are_config_errors(tmp_path: Path, setting: dict, message: str) -> None:
    cfg = _config(tmp_path, **setting)
    result = run("train", "-c", str(cfg))
    assert result.exit_code == 3, result.output
    assert result.stderr.startswith(f"Error: {cfg.resolve()}: {message}"), result.stderr
    _no_traceback(result)
    assert not (tmp_path / "runs").exists()  # refused before anything was written


def test_unknown_target_module_is_refused_before_the_model_loads(tmp_path: Path, micro_model: Path) -> None:
    cfg = _config(tmp_path, train__target_modules=["q_proj", "nonexistent"])
    result = run("train", "-c", str(cfg))
    assert result.exit_code == 3, result.output
    assert result.stderr.startswith(
        "Error: train.target_modules: 'nonexistent' is not a module of the base model; "
        "its layers are down_proj, gate_proj, k_proj, o_proj, q_proj, up_proj, v_proj"
    )
    _no_traceback(result)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("train.max_steps=[1,", "--set 'train.max_steps=[1,': the value is not valid YAML"),
        ("name.x=1", "--set name.x: name is not a section"),
        ("=3", "--set '=3': expected KEY=VALUE with a key such as train.max_steps"),
    ],
)
def test_malformed_set_is_a_config_error(tmp_path: Path, value: str, message: str) -> None:
    result = run("train", "-c", str(_config(tmp_path)), "--set", value)
    assert result.exit_code == 3, result.output
    assert result.stderr.startswith(f"Error: {message}"), result.stderr
    _no_traceback(result)


def test_deeply_nested_json_and_garbage_parquet_are_data_errors(tmp_path: Path) -> None:
    rows = (EXAMPLE / "data" / "nl2sql.jsonl").read_text().splitlines()[:12]
    bomb = tmp_path / "bomb.jsonl"
    bomb.write_text("\n".join(rows[:5] + ["[" * 5_000_000] + rows[5:]) + "\n")
    result = run("data", "check", str(bomb))
    assert result.exit_code == 4, result.output
    assert f"{bomb}:6" in result.stdout and "nested too deeply" in result.stdout
    _no_traceback(result)
    (tmp_path / "bomb.json").write_text("[" * 5_000_000)
    result = run("data", "check", str(tmp_path / "bomb.json"))
    assert (
        result.exit_code == 4
        and result.stderr == f"Error: {tmp_path / 'bomb.json'}: not usable JSON (nested too deeply)\n"
    )
    garbage = tmp_path / "rows.parquet"
    garbage.write_bytes(b"PAR1 this is not parquet at all" * 10)
    result = run("data", "check", str(garbage))
    assert result.exit_code == 4, result.output
    assert result.stderr.startswith(f"Error: {garbage}: not a readable Parquet file (")
    _no_traceback(result)
    csv_file = tmp_path / "rows.csv"
    csv_file.write_text('prompt,completion\n"' + "x" * 200_000 + '",y\n')
    result = run("data", "check", str(csv_file))
    assert result.exit_code == 4 and result.stderr.startswith(f"Error: {csv_file}:")
    _no_traceback(result)


def test_pickled_only_base_model_is_refused_with_the_way_out(tmp_path: Path, micro_model: Path) -> None:
    base = tmp_path / "base"
    base.mkdir()
    shutil.copy(micro_model / "config.json", base / "config.json")
    (base / "pytorch_model.bin").write_bytes(b"\x80\x04not loaded, ever")
    result = run("train", "-c", str(_config(tmp_path, base_model=str(base))))
    assert result.exit_code == 5, result.output
    assert result.stderr.startswith(
        f"Error: base_model: {base} has only pickled weights (pytorch_model.bin); "
        "edgeft loads safetensors only, because loading a pickle can run code."
    )
    assert "save_pretrained" in result.stderr
    _no_traceback(result)


def test_model_code_needs_trust_remote_code(tmp_path: Path, micro_model: Path) -> None:
    base = tmp_path / "custom"
    shutil.copytree(micro_model, base)
    config = json.loads((base / "config.json").read_text())
    config.update(model_type="my-own-llm", auto_map={"AutoModelForCausalLM": "modeling_mine.MyModel"})
    (base / "config.json").write_text(json.dumps(config))
    result = run("train", "-c", str(_config(tmp_path, base_model=str(base))))
    assert result.exit_code == 3, result.output
    assert (
        result.stderr.startswith(
            f"Error: {tmp_path / 'edgeft.yaml'}: base_model: {base} ships its own model code "
            f"(auto_map in config.json"
        )
        or "trust_remote_code: true" in result.stderr
    )
    assert "trust_remote_code: true" in result.stderr
    _no_traceback(result)


def test_unreachable_hub_id_says_what_to_do(tmp_path: Path) -> None:
    result = run("train", "-c", str(_config(tmp_path, base_model="edgeft-test-org/no-such-model")))
    assert result.exit_code == 5, result.output
    assert result.stderr.startswith(
        "Error: base_model: 'edgeft-test-org/no-such-model' is not a local directory and "
        "could not be fetched from the Hugging Face hub ("
    )
    assert "hf download edgeft-test-org/no-such-model" in result.stderr
    _no_traceback(result)


def test_template_that_refuses_a_row_is_a_finding(tmp_path: Path, micro_model: Path) -> None:
    base = tmp_path / "picky"
    shutil.copytree(micro_model, base)
    (base / "chat_template.jinja").write_text(
        "{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
        "{% endif %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    )
    rows = tmp_path / "rows.jsonl"
    lines = (EXAMPLE / "data" / "nl2sql.jsonl").read_text().splitlines()[:12]
    lines[3] = json.dumps({**json.loads(lines[3]), "system": "Be brief."})
    rows.write_text("\n".join(lines) + "\n")
    result = run("data", "check", str(rows), "--model", str(base), "--json")
    assert result.exit_code == 4, result.output
    found = [f for f in json.loads(result.stdout)["findings"] if f["check"] == "template"]
    assert found == [
        {
            "severity": "error",
            "where": f"{rows}:4",
            "check": "template",
            "message": "the model's chat template refuses this conversation: System role not supported",
        }
    ]


def test_template_bomb_in_a_base_model_is_refused_quickly(tmp_path: Path, micro_model: Path) -> None:
    base = tmp_path / "bomb"
    shutil.copytree(micro_model, base)
    (base / "chat_template.jinja").write_text(
        "{{ 'x' * 200000000 }}{% for m in messages %}{{ m['content'] }}{% endfor %}"
    )
    result = run("data", "check", DATA, "--model", str(base))
    assert result.exit_code == 5, result.output
    assert result.stderr.startswith(
        f"Error: base model {base}: its chat template was stopped: repeating a value "
        "200,000,000 times makes 200,000,000 items (limit 4,000,000)"
    )
    _no_traceback(result)
