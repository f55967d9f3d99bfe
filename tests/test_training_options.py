"""Training options a practitioner relies on, each for real on the micro model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import EXAMPLE, write_config

from edgeft.cli import cli

pytestmark = pytest.mark.slow


def _config(tmp_path: Path, base: str = "tiny:micro", **train) -> Path:
    return write_config(tmp_path / "edgeft.yaml", name="opt", base_model=base, workdir=str(tmp_path / "runs"),
                        data={"train": str(EXAMPLE / "data" / "nl2sql.jsonl")},
                        train={"max_seq_length": 256, "learning_rate": 0.003, **train})


def _train(cfg: Path, *extra: str) -> dict:
    result = CliRunner().invoke(cli, ["-q", "train", "-c", str(cfg), *extra])
    assert result.exit_code == 0, result.output
    return json.loads((Path(result.stdout.strip()) / "edgeft.json").read_text())


def test_base_without_a_template_gets_the_documented_default(tmp_path: Path, micro_model: Path) -> None:
    from transformers import AutoTokenizer

    from edgeft.base import DEFAULT_CHAT_TEMPLATE, end_of_turn

    bare = tmp_path / "bare"
    shutil.copytree(micro_model, bare)
    (bare / "chat_template.jinja").unlink()
    tc = json.loads((bare / "tokenizer_config.json").read_text())
    tc.pop("chat_template", None)
    (bare / "tokenizer_config.json").write_text(json.dumps(tc))
    manifest = _train(_config(tmp_path, base=str(bare), max_steps=4))
    assert manifest["chat_template"] == "edgeft default (the base had none)"
    tok = AutoTokenizer.from_pretrained(tmp_path / "runs" / "opt" / "train" / "adapter")
    assert tok.chat_template == DEFAULT_CHAT_TEMPLATE
    # The base's own EOS ends the assistant's turn.
    assert end_of_turn(tok) == (tok.eos_token, tok.eos_token_id)


def test_early_stopping_ends_a_diverging_run(tmp_path: Path, micro_model: Path) -> None:
    # With a learning rate this high validation loss soon stops improving: patience 1 ends the
    # run at the first evaluation that is no better, and the best checkpoint is what is kept.
    manifest = _train(_config(tmp_path, max_steps=60, eval_steps=3, learning_rate=0.5,
                              early_stopping_patience=1))
    m = manifest["metrics"]
    assert m["steps"] < 60
    assert m["val_loss"] == min(m["val_losses"])


def test_full_sequence_loss_and_packing(tmp_path: Path, micro_model: Path) -> None:
    manifest = _train(_config(tmp_path, max_steps=4, assistant_only_loss=False, packing=True,
                              gradient_checkpointing=True))
    assert manifest["metrics"]["steps"] == 4
    assert manifest["config"]["train"]["packing"] is True


def test_plain_text_data_trains_exports_and_verifies(tmp_path: Path, micro_model: Path) -> None:
    rows = [json.loads(line) for line in (EXAMPLE / "data" / "nl2sql.jsonl").read_text().splitlines()[:120]]
    data = tmp_path / "text.jsonl"
    data.write_text("".join(json.dumps({"text": f"Q: {r['input']}\nA: {r['output']}"}) + "\n" for r in rows))
    cfg = write_config(tmp_path / "edgeft.yaml", name="text", base_model="tiny:micro", workdir="runs",
                       dist_dir="dist", data={"train": str(data)},
                       train={"max_steps": 10, "learning_rate": 0.003, "max_seq_length": 128},
                       export={"gguf": {"types": ["f16"]}, "onnx": {"types": []}},
                       verify={"max_prompts": 3, "max_new_tokens": 16})
    result = CliRunner().invoke(cli, ["build", "-c", str(cfg)])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "dist" / "text" / "verify" / "report.json").read_text())
    checks = report["artifacts"]["gguf-f16"]["checks"]
    assert checks["tokens_plain"]["passed"] and checks["tokens_plain"]["detail"] == "3 probes identical"
    assert report["passed"]
