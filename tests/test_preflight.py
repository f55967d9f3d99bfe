"""`edgeft check-model` and build's first step: each consumer's answer comes from the pinned tool
(llama.cpp's converter table and runtime, gguf-py's block sizes, optimum-onnx's registry,
onnxruntime-genai's builder, the JS Jinja engine), and an architecture a configured export cannot
take stops the build in seconds, before training."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import EXAMPLE, write_config

from edgeft.cli import cli

pytestmark = pytest.mark.slow


def test_check_model_answers_from_the_tools(micro_model: Path) -> None:
    result = CliRunner().invoke(cli, ["check-model", "tiny:micro", "--json"])
    assert result.exit_code == 0, result.output
    answers = {a["consumer"]: a for a in json.loads(result.stdout)}
    for consumer in (
        "llama.cpp converter",
        "llama.cpp runtime (llama-cpp-python, Java kit)",
        "optimum-onnx export",
        "onnxruntime-genai builder (int4)",
    ):
        assert answers[consumer]["ok"] is True, answers[consumer]
    assert (
        "loads as 'llama' (512 tokens)" in answers["llama.cpp runtime (llama-cpp-python, Java kit)"]["detail"]
    )
    # The micro model's widths (64, 128) are not multiples of the K-quants' 256: said, not refused.
    assert (
        answers["GGUF q4_k_m"]["ok"]
        and "64 (hidden size), 128 (MLP width)" in answers["GGUF q4_k_m"]["detail"]
    )
    assert answers["GGUF q8_0"]["detail"] == "every width divides into blocks of 32"
    assert answers["Ollama create"]["ok"] is None  # not answered, and says so


def test_an_architecture_no_exporter_knows_stops_the_build_before_training(
    tmp_path: Path, micro_model: Path
) -> None:
    model = tmp_path / "model"
    shutil.copytree(micro_model, model)
    config = json.loads((model / "config.json").read_text())
    config["architectures"] = ["EdgeftUnknownForCausalLM"]
    (model / "config.json").write_text(json.dumps(config))
    cfg = write_config(
        tmp_path / "edgeft.yaml",
        name="x",
        base_model=str(model),
        workdir="runs",
        dist_dir="dist",
        data={"train": str(EXAMPLE / "data" / "nl2sql.jsonl")},
        export={"gguf": {"types": ["f16"]}, "onnx": {"types": ["int4"]}},
    )
    result = CliRunner().invoke(cli, ["check-model", str(model), "-c", str(cfg)])
    assert result.exit_code == 3, result.output
    assert (
        "llama.cpp converter: the pinned converter has no class for EdgeftUnknownForCausalLM" in result.stderr
    )
    assert (
        "onnxruntime-genai builder (int4): its builder does not build EdgeftUnknownForCausalLM"
        in result.stderr
    )
    result = CliRunner().invoke(cli, ["build", "-c", str(cfg)])
    assert result.exit_code == 3, result.output
    assert "cannot be exported as the config asks" in result.stderr
    assert not (tmp_path / "runs" / "x" / "train").exists()  # no training started
    # Without the exports it cannot make, the same base passes the pre-flight.
    ok = write_config(
        tmp_path / "ok.yaml",
        name="x",
        base_model=str(model),
        workdir="runs",
        dist_dir="dist",
        data={"train": str(EXAMPLE / "data" / "nl2sql.jsonl")},
        export={"gguf": {"types": []}, "onnx": {"types": ["fp32"]}},
    )
    result = CliRunner().invoke(cli, ["check-model", str(model), "-c", str(ok)])
    assert result.exit_code == 0, result.output
