from __future__ import annotations

from pathlib import Path

import pytest

from edgeft.core.config import load_config, parse_config
from edgeft.core.errors import ConfigError, InputError

VALID = {"name": "demo", "base_model": "tiny:micro", "data": {"train": "d.jsonl"}}


def test_defaults_fill_every_section() -> None:
    cfg = parse_config(VALID)
    assert cfg.train.lora_r == 16
    assert cfg.export.gguf.types == ["f16", "q8_0", "q4_k_m"]
    assert cfg.export.onnx.types == ["fp32", "int8"]


def test_all_problems_reported_at_once_with_suggestions() -> None:
    raw = {
        **VALID,
        "trian": {},
        "train": {"lora_rank": 8, "learning_rate": "fast"},
        "export": {"gguf": {"types": ["q4_k_m", "q9"]}},
    }
    with pytest.raises(ConfigError) as e:
        parse_config(raw, "cfg.yaml")
    problems = e.value.problems
    assert "unknown key 'trian' (did you mean 'train'?)" in problems
    assert "unknown key 'train.lora_rank' (did you mean 'lora_r'?)" in problems
    assert "train.learning_rate: expected float, got 'fast'" in problems
    assert len(problems) == 3  # value checks (q9) run once the structure is sound
    assert str(e.value).startswith("cfg.yaml: 3 problems")
    assert e.value.exit_code == 3


def test_value_checks() -> None:
    raw = {**VALID, "train": {"quantization": "int3"}, "export": {"gguf": {"types": ["q9"]}}}
    with pytest.raises(ConfigError) as e:
        parse_config(raw)
    assert any("train.quantization: 'int3'" in p for p in e.value.problems)
    assert any("export.gguf.types: 'q9' is not one of" in p for p in e.value.problems)


def test_required_keys() -> None:
    with pytest.raises(ConfigError) as e:
        parse_config({})
    assert {p.split(":")[0] for p in e.value.problems} == {"name", "base_model", "data.train"}


def test_yaml_error_names_file_and_line(tmp_path: Path) -> None:
    p = tmp_path / "bad.yaml"
    p.write_text("name: x\ntrain:\n  lora_r: [1,\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert str(e.value).startswith(f"{p}:")


def test_missing_file_is_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")


def test_paths_resolve_against_the_config_file(tmp_path: Path) -> None:
    p = tmp_path / "sub" / "edgeft.yaml"
    p.parent.mkdir()
    p.write_text("name: demo\nbase_model: tiny:micro\ndata: {train: d.jsonl}\n")
    cfg = load_config(p, {"train.max_steps": 5})
    assert cfg.path(cfg.data.train) == p.parent.resolve() / "d.jsonl"
    assert cfg.run_dir == p.parent.resolve() / "runs" / "demo"
    assert cfg.train.max_steps == 5
