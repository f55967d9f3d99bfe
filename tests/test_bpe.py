"""A byte-level BPE tokenizer llama.cpp does not know by hash: converted when its pre-tokenizer
configuration is one llama.cpp implements, refused with a clear message when it is not."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import EXAMPLE, write_config

from edgeft.cli import cli
from edgeft.manifest import StageWriter

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def bpe_model(edgeft_cache: Path) -> Path:
    from edgeft.tiny import cached_tiny_model

    return cached_tiny_model("micro-bpe", 0)


def test_bpe_variant_builds_and_verifies(tmp_path: Path, bpe_model: Path) -> None:
    cfg = write_config(tmp_path / "edgeft.yaml", name="bpe", base_model="tiny:micro-bpe", workdir="runs",
                       dist_dir="dist", data={"train": str(EXAMPLE / "data" / "nl2sql.jsonl")},
                       train={"max_steps": 20, "learning_rate": 0.003, "max_seq_length": 256},
                       export={"gguf": {"types": ["f16", "q8_0"]}, "onnx": {"types": []}},
                       verify={"max_prompts": 3, "max_new_tokens": 16})
    result = CliRunner().invoke(cli, ["build", "-c", str(cfg)])
    assert result.exit_code == 0, result.output
    assert "identical to 'gpt-2' by configuration" in result.stderr
    report = json.loads((tmp_path / "dist" / "bpe" / "verify" / "report.json").read_text())
    assert report["passed"]
    for name in ("gguf-f16", "gguf-q8_0"):
        assert report["artifacts"][name]["checks"]["tokens_chat"]["passed"]
        assert report["artifacts"][name]["checks"]["chat_template"]["passed"]


def test_unknown_pre_tokenizer_is_refused_by_name(tmp_path: Path, bpe_model: Path) -> None:
    merge_dir = tmp_path / "merge"
    with StageWriter(merge_dir, "merge") as w:
        shutil.copytree(bpe_model, w.tmp / "model")
        tj_path = w.tmp / "model" / "tokenizer.json"
        tj = json.loads(tj_path.read_text())
        tj["pre_tokenizer"]["add_prefix_space"] = True  # no longer GPT-2's pre-tokenizer
        tj_path.write_text(json.dumps(tj))
        w.add_artifact("model", "model", "hf-safetensors")
        w.publish()
    cfg = write_config(tmp_path / "edgeft.yaml", name="x", base_model="tiny:micro-bpe",
                       data={"train": str(EXAMPLE / "data" / "nl2sql.jsonl")})
    out = tmp_path / "gguf"
    result = CliRunner().invoke(cli, ["export", "gguf", "-c", str(cfg), "--merge-dir", str(merge_dir),
                                      "--out", str(out)])
    assert result.exit_code == 6, result.output
    message = result.stderr.strip().splitlines()[-1]
    assert message.startswith(f"Error: {merge_dir / 'model' / 'tokenizer.json'}: llama.cpp does not recognise "
                              "this BPE pre-tokenizer (hash ")
    assert '"add_prefix_space": true' in message and "matches none it implements (gpt-2)" in message
    assert not out.exists()
