"""A Qwen2-family model (the tiny kit's Qwen2 variant, Qwen's special-token layout) through
`edgeft build` without the false alarms a real Qwen2.5 raised: its GGUF names <|endoftext|> as
BOS while no runtime adds one, and its ORT GenAI folder lists two EOS ids, <|im_end|> first."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import EXAMPLE, write_config

from edgeft.cli import cli

pytestmark = pytest.mark.slow


def test_a_qwen2_layout_builds_and_verifies_without_false_alarms(tmp_path: Path, edgeft_cache: Path) -> None:
    from transformers import AutoTokenizer

    from edgeft.runtimes.genai import GenAIRuntime
    from edgeft.runtimes.llamacpp import LlamaCppRuntime

    cfg = write_config(
        tmp_path / "edgeft.yaml",
        name="qwen",
        base_model="tiny:micro-qwen2",
        workdir="runs",
        dist_dir="dist",
        data={"train": str(EXAMPLE / "data" / "nl2sql.jsonl")},
        train={"max_steps": 20, "learning_rate": 0.003, "max_seq_length": 256},
        export={"gguf": {"types": ["f16"]}, "onnx": {"types": ["int4"]}},
        verify={"max_prompts": 3, "max_new_tokens": 16},
        eval={"max_examples": 8},
    )
    result = CliRunner().invoke(cli, ["build", "-c", str(cfg)])
    assert result.exit_code == 0, result.output
    dist = tmp_path / "dist" / "qwen"
    report = json.loads((dist / "verify" / "report.json").read_text())
    assert report["passed"], report["failures"]
    tok = AutoTokenizer.from_pretrained(tmp_path / "runs" / "qwen" / "merge" / "model")
    endoftext, im_end = tok.convert_tokens_to_ids(["<|endoftext|>", "<|im_end|>"])
    assert tok.bos_token_id is None and tok.eos_token_id == im_end
    for name, art in report["artifacts"].items():
        special = art["checks"]["special_tokens"]
        assert special["passed"] and special["eos"] == im_end, (name, special)
        assert {im_end, endoftext} <= set(special["stop"]), (name, special)
    # The conditions that raised the alarms are there: a BOS named and not added, two EOS ids.
    with LlamaCppRuntime(dist / "gguf" / "qwen-f16.gguf") as rt:
        assert rt.special_tokens()["bos"] == endoftext and rt.bos_added() is None
    modelfile = (dist / "gguf" / "qwen-f16.Modelfile").read_text()
    assert 'PARAMETER stop "<|im_end|>"' in modelfile and 'PARAMETER stop "<|endoftext|>"' in modelfile
    genai = next(p.parent for p in dist.rglob("genai_config.json"))
    assert json.loads((genai / "genai_config.json").read_text())["model"]["eos_token_id"] == [
        im_end,
        endoftext,
    ]
    with GenAIRuntime(genai) as rt:
        assert rt.special_tokens()["eos"] == im_end and rt.bos_added() is None
