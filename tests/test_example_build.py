"""README command 1 for real: `edgeft build` on the bundled nl2sql example."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import EXAMPLE

from edgeft.cli import cli
from edgeft.core.fileio import sha256_file

pytestmark = pytest.mark.slow


def build(tmp: Path, *extra: str):
    return CliRunner().invoke(
        cli,
        [
            "build",
            "-c",
            str(EXAMPLE / "edgeft.yaml"),
            "--set",
            f"workdir={tmp / 'runs'}",
            "--set",
            f"dist_dir={tmp / 'dist'}",
            *extra,
        ],
    )


def test_example_build_end_to_end(tmp_path: Path) -> None:
    result = build(tmp_path)
    assert result.exit_code == 0, result.output
    dist = Path(result.stdout.strip())
    assert dist == tmp_path / "dist" / "nl2sql-tiny"
    manifest = json.loads((dist / "manifest.json").read_text())
    by_type = {(a["format"], a["type"]): a for a in manifest["artifacts"]}
    assert {
        ("gguf", "q4_k_m"),
        ("gguf", "q8_0"),
        ("onnx", "fp32"),
        ("onnx", "int8"),
        ("gguf-lora", "f16"),
        ("onnx", "fp16"),
        ("onnx-genai", "int4"),
    } <= set(by_type)
    for f in manifest["files"]:
        assert sha256_file(dist / f["path"]) == f["sha256"], f["path"]
        assert (dist / f["path"]).stat().st_size == f["bytes"]
    # "small" has K-quant-friendly dimensions: nothing falls back to another type.
    assert by_type[("gguf", "q4_k_m")]["fallback_tensors"] == 0
    report = json.loads((dist / "verify" / "report.json").read_text())
    assert report["passed"] and manifest["verify"]["passed"]
    # "Always measure before and after": the fine-tune beats its base on the held-out split.
    scores = manifest["evaluation"]["scores"]
    assert scores["fine-tuned"]["exact_match"] > scores["base"]["exact_match"]
    assert scores["fine-tuned"]["format"] > scores["base"]["format"]
    assert manifest["evaluation"]["passed"] and (dist / "eval" / "results.md").is_file()
    training = manifest["lineage"]["training"]
    assert training["val_loss"] < training["base_val_loss"]
    assert manifest["lineage"]["dataset"]["train_rows"] == 360
    assert manifest["config"]["base_model"] == "tiny:small"
    assert "nl2sql-tiny" in (dist / "README.md").read_text()
    # The Java kit's README gives ONNX Runtime Java users the exact input and output names.
    kit_readme = (dist / "java" / "README.md").read_text()
    assert "### `../onnx/onnx-int8/model.onnx` (int8, opset 17)" in kit_readme
    assert "| input | `past_key_values.1.value` | float |" in kit_readme

    # Unchanged inputs: nothing heavy re-runs.
    started = time.time()
    again = build(tmp_path)
    assert again.exit_code == 0, again.output
    assert (
        "edgeft: ran nothing; reused train, merge, export-gguf, export-onnx, verify, eval, package"
        in again.stderr
    )
    assert time.time() - started < 10

    # Only export settings changed: re-export, re-verify, re-evaluate; no retraining. Every other
    # GGUF type comes out of the same build, each verified in llama.cpp; then the regression gate
    # stops the build (exit 8, no new dist) at q2_k: 2-bit weights of a 256-wide model lose answers
    # the fine-tuned model got right, significantly (paired, mid-p McNemar) and far beyond the 5%
    # margin (measured: 0/40 and 7/40 exact vs 9-12/40 on two CPUs; 5 lost, none won, p = 0.016).
    others = ["f32", "bf16", "q6_k", "q5_k_m", "q4_0", "q3_k_m", "q2_k"]
    manifest_before = (dist / "manifest.json").read_bytes()
    changed = build(tmp_path, "--set", f"export.gguf.types=[{', '.join(others)}]", "--set", "license=mit")
    assert changed.exit_code == 8, changed.output
    assert "edgeft: [eval] running" in changed.stderr and "\ngguf-q2_k: " in changed.stderr
    assert (dist / "manifest.json").read_bytes() == manifest_before
    runs = tmp_path / "runs" / "nl2sql-tiny"
    report = json.loads((runs / "verify" / "report.json").read_text())
    assert report["passed"] and set(report["artifacts"]) == {f"gguf-{t}" for t in others} | {
        "gguf-lora",
        "onnx-fp32",
        "onnx-fp16",
        "onnx-int8",
        "onnx-genai-int4",
    }
    results = json.loads((runs / "eval" / "results.json").read_text())
    assert results["models"]["gguf-f32"]["passed"] and not results["models"]["gguf-q2_k"]["passed"]
    # Metadata read back from the files: name, lineage, license, special tokens.
    exported = json.loads((runs / "export-gguf" / "edgeft.json").read_text())
    meta = {a["name"]: a["metadata"] for a in exported["artifacts"]}
    assert meta["gguf-lora"] == meta["gguf-q2_k"]  # the base GGUF of the adapter says the same
    assert meta["gguf-q2_k"] == {
        "general.name": "nl2sql-tiny",
        "general.finetune": "nl2sql-tiny",
        "general.base_model.0.name": "edgeft-tiny-small",
        "general.license": "mit",
        "tokenizer.ggml.bos_token_id": 1,
        "tokenizer.ggml.eos_token_id": 2,
        "tokenizer.ggml.eot_token_id": 4,
    }
