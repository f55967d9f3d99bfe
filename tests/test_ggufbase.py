"""Any GGUF as a base (`base_model: path/to/model.gguf`): dequantized into a cached HF directory
whose tokenizer must tokenise like llama.cpp on the file, else refused with the texts that differ;
the training manifest and model card say which file and type the weights came from."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import EXAMPLE, write_config

from edgeft.cli import cli

pytestmark = pytest.mark.slow


def test_a_gguf_base_trains_with_its_lineage(tmp_path: Path, micro_model: Path) -> None:
    from edgeft.export.gguf import convert_hf
    from edgeft.manifest import read_stage, sha256_file

    base = tmp_path / "base.gguf"
    convert_hf(micro_model, base, "micro", outtype="f16")
    cfg = write_config(tmp_path / "edgeft.yaml", name="g", base_model="base.gguf", workdir="runs", dist_dir="dist",
                       data={"train": str(EXAMPLE / "data" / "nl2sql.jsonl")},
                       train={"max_steps": 3, "max_seq_length": 256})
    result = CliRunner().invoke(cli, ["train", "-c", str(cfg)])
    assert result.exit_code == 0, result.output
    train = read_stage(tmp_path / "runs" / "g" / "train", "train")
    assert f"dequantized from base.gguf (f16 GGUF, sha256 {sha256_file(base)})" in train.metrics["base_source"]
    source = json.loads((Path(train.data["resolved_base"]) / "edgeft_source.json").read_text())
    assert source["gguf"]["architecture"] == "llama" and source["gguf"]["type"] == "f16"


def test_a_gguf_whose_tokenizer_transformers_misreads_is_refused(tmp_path: Path, smollm2: Path) -> None:
    """transformers' GGUF loader reads SmolLM2's tokenizer wrong (it adds a BOS, splits digits its
    own way): training on it would teach a model tokens its GGUF never sees."""
    from edgeft.realmodel import SMOLLM2, source_gguf

    result = CliRunner().invoke(cli, ["check-model", str(source_gguf(SMOLLM2))])
    assert result.exit_code == 5, result.output
    assert "transformers reads this file's tokenizer differently from llama.cpp on" in result.stderr
    assert "in transformers," in result.stderr and "in llama.cpp" in result.stderr
