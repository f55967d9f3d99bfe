"""Every stage for real on the micro tiny model: train (LoRA and QLoRA on CPU), merge, export,
verify, package, and the parity gate failing when a wrong GGUF is put in place."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import EXAMPLE, resign, write_config

from edgeft.cli import cli
from edgeft.core.fileio import sha256_file

pytestmark = pytest.mark.slow


def run(*args: str):
    return CliRunner().invoke(cli, list(args))


def test_build_publishes_a_consistent_dist(built: dict) -> None:
    dist = built["dist"]
    assert dist == built["root"] / "dist" / "micro"
    manifest = json.loads((dist / "manifest.json").read_text())
    for f in manifest["files"]:
        assert sha256_file(dist / f["path"]) == f["sha256"], f["path"]
    names = {a["name"] for a in manifest["artifacts"]}
    assert names == {"gguf-f16", "gguf-q8_0", "onnx-fp32"}
    assert manifest["verify"]["passed"] is True
    assert (dist / "verify" / "kl.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    training = manifest["lineage"]["training"]
    assert training["val_loss"] < training["base_val_loss"]
    assert manifest["versions"]["llama-cpp-python"] == "0.3.36"
    assert manifest["versions"]["llama.cpp tools"].startswith("llama-cpp-python==0.3.36")
    # The frontier: every artifact with its size and speed, measured by eval in this run.
    frontier = json.loads((dist / "frontier.json").read_text())
    assert {r["name"] for r in frontier["rows"]} == names and manifest["recommended"] == frontier[
        "recommended"
    ]
    assert manifest["recommended"] in names and (dist / "frontier.png").read_bytes()[:4] == b"\x89PNG"
    results = json.loads((dist / "eval" / "results.json").read_text())
    for name in names:
        speed = results["models"][name]["speed"]
        assert speed["generation_tokens_per_s"] > 0 and speed["prompt_tokens_per_s"] > 0, name
    assert "## Size, quality and speed" in (dist / "README.md").read_text()
    # No temporary directories are left next to the published stages; the lock file stays (removing
    # it on release would let two processes lock two different files of the same name).
    assert [p.name for p in (built["root"] / "runs" / "micro").iterdir() if p.name.startswith(".")] == [
        ".edgeft.lock"
    ]


def test_merged_model_stops_at_end_of_turn(built: dict) -> None:
    merged = json.loads((built["root"] / "runs/micro/merge/edgeft.json").read_text())
    gen = json.loads((built["root"] / "runs/micro/merge/model/generation_config.json").read_text())
    assert merged["end_of_turn"] == "<|im_end|>"
    assert 4 in gen["eos_token_id"]  # <|im_end|> is id 4 in the tiny tokenizer


def test_qlora_trains_on_cpu(built: dict, tmp_path: Path, recwarn: pytest.WarningsRecorder) -> None:
    out = tmp_path / "qlora"
    result = run(
        "train",
        "-c",
        str(built["config"]),
        "--set",
        "train.quantization=nf4",
        "--set",
        "train.max_steps=6",
        "--out",
        str(out),
    )
    assert result.exit_code == 0, result.output
    # Gradients must flow through the 4-bit base layers (bitsandbytes' CPU inference kernel,
    # which it switches to after an evaluation, has no backward).
    assert not [w for w in recwarn if "gemv_4bit" in str(w.message)]
    manifest = json.loads((out / "edgeft.json").read_text())
    assert manifest["base_loaded_as"]["layers"].get("Linear4bit", 0) == 14  # 7 per layer, 2 layers
    assert manifest["artifacts"][0]["quantization"] == "nf4"
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    assert manifest["metrics"]["val_loss"] < manifest["metrics"]["base_val_loss"]
    # Merging a QLoRA adapter goes into the full-precision base by default, never the 4-bit one,
    # and both strategies are measured against the adapter on the 4-bit base.
    merged = tmp_path / "merged"
    result = run("merge", "-c", str(built["config"]), "--train-dir", str(out), "--out", str(merged))
    assert result.exit_code == 0, result.output
    assert json.loads((merged / "model" / "config.json").read_text()).get("quantization_config") is None
    stage = json.loads((merged / "edgeft.json").read_text())
    comparison = stage["metrics"]["merge_comparison"]
    assert stage["artifacts"][0]["strategy"] == "full-precision"
    # The dequantized weights are what the adapter was trained on: that merge reproduces the
    # trained model up to float rounding; the full-precision one differs by the NF4 error.
    assert comparison["dequantized"]["kl_mean"] < 1e-4 and comparison["dequantized"]["top1"] > 0.99
    assert comparison["full-precision"]["kl_mean"] > 10 * comparison["dequantized"]["kl_mean"]
    dq = tmp_path / "merged-dq"
    result = run(
        "merge",
        "-c",
        str(built["config"]),
        "--train-dir",
        str(out),
        "--out",
        str(dq),
        "--set",
        "merge.strategy=dequantized",
    )
    assert result.exit_code == 0, result.output
    assert json.loads((dq / "edgeft.json").read_text())["artifacts"][0]["strategy"] == "dequantized"


def _copy_gguf_stage(built: dict, tmp_path: Path) -> Path:
    copy = tmp_path / "export-gguf"
    shutil.copytree(built["root"] / "runs/micro/export-gguf", copy)
    return copy


def test_verify_fails_on_a_gguf_from_another_model(
    built: dict, other_micro_model: Path, tmp_path: Path
) -> None:
    from edgeft.pipeline.export.gguf import convert_hf

    copy = _copy_gguf_stage(built, tmp_path)
    target = copy / "micro-q8_0.gguf"
    convert_hf(other_micro_model, target, "micro", outtype="q8_0")
    # Keep the manifest consistent with the swapped file: the parity checks, not the
    # checksums, must catch it.
    resign(copy, target.name)
    out = tmp_path / "verify"
    result = run("verify", "-c", str(built["config"]), "--export-dir", str(copy), "--out", str(out))
    assert result.exit_code == 7, result.output
    assert "Error: verification failed" in result.stderr
    assert "gguf-q8_0: kl_mean: mean KL" in result.stderr
    assert "gguf-q8_0: top1: top-1 agreement" in result.stderr
    assert "gguf-f16" not in result.stderr.split("report:")[1]  # the right file still passes
    report = json.loads((out / "report.json").read_text())
    assert report["passed"] is False
    assert report["artifacts"]["gguf-f16"]["passed"] is True
    assert report["artifacts"]["gguf-q8_0"]["numbers"]["kl_mean"] > 0.5


def test_verify_fails_on_a_file_that_differs_from_its_manifest(built: dict, tmp_path: Path) -> None:
    copy = _copy_gguf_stage(built, tmp_path)
    shutil.copy(copy / "micro-f16.gguf", copy / "micro-q8_0.gguf")
    result = run(
        "verify", "-c", str(built["config"]), "--export-dir", str(copy), "--out", str(tmp_path / "v")
    )
    assert result.exit_code == 7
    assert "gguf-q8_0: checksums:" in result.stderr


def test_converter_failure_is_a_tool_error(micro_model: Path, tmp_path: Path) -> None:
    from edgeft.core.manifest import StageWriter

    merge_dir = tmp_path / "merge"
    with StageWriter(merge_dir, "merge") as w:
        shutil.copytree(micro_model, w.tmp / "model")
        config = json.loads((w.tmp / "model" / "config.json").read_text())
        config["architectures"] = ["NoSuchForCausalLM"]
        (w.tmp / "model" / "config.json").write_text(json.dumps(config))
        w.add_artifact("model", "model", "hf-safetensors")
        w.publish()
    cfg = write_config(
        tmp_path / "edgeft.yaml",
        name="x",
        base_model="tiny:micro",
        data={"train": str(EXAMPLE / "data" / "nl2sql.jsonl")},
    )
    out = tmp_path / "gguf"
    result = run("export", "gguf", "-c", str(cfg), "--merge-dir", str(merge_dir), "--out", str(out))
    assert result.exit_code == 6, result.output
    assert (
        f"Error: convert_hf_to_gguf.py failed on {merge_dir / 'model'} (exit 1):\n"
        "ERROR:hf-to-gguf:Model NoSuchForCausalLM is not supported\n"
    ) in result.stderr
    assert not out.exists() and [p.name for p in tmp_path.iterdir() if p.name.startswith(".gguf")] == []


def _reference_answer(built: dict, question: str) -> str:
    from edgeft.runtimes.hf import HFRuntime

    rt = HFRuntime(built["root"] / "runs/micro/merge/model")
    ids = rt.tokenize(rt.chat_prompt([{"role": "user", "content": question}]), add_special=False)
    tokens, stopped = rt.generate(ids, 40)
    return rt.detokenize(tokens)


def test_run_answers_like_the_trained_model(built: dict) -> None:
    question = (
        "Convert the following natural language query into a SQL statement.\n\nList departments on floor 3."
    )
    want = _reference_answer(built, question)
    onnx = run("run", str(built["dist"] / "onnx" / "onnx-fp32"), question, "--max-tokens", "40", "--json")
    assert onnx.exit_code == 0, onnx.output
    reply = json.loads(onnx.stdout)
    assert reply["text"] == want
    assert reply["completion_tokens"] > 0 and reply["tokens_per_s"] > 0
    gguf = run("run", str(built["dist"]), question, "--type", "f16", "--max-tokens", "40")
    assert gguf.exit_code == 0, gguf.output
    assert gguf.stdout == want + "\n"


def test_chat_streams_replies_and_keeps_the_conversation(built: dict) -> None:
    question = "List departments on floor 3."
    want = _reference_answer(built, question)
    result = CliRunner().invoke(
        cli,
        ["chat", str(built["dist"] / "gguf" / "micro-f16.gguf"), "--max-tokens", "40"],
        input=f"{question}\n/reset\n/exit\n",
    )
    assert result.exit_code == 0, result.output
    assert result.stdout == f"> {want}\n> > "  # the reply, then the prompts for /reset and /exit


def test_run_rejects_what_is_not_an_artifact(tmp_path: Path) -> None:
    (tmp_path / "x.bin").write_bytes(b"x")
    result = run("run", str(tmp_path / "x.bin"), "hi")
    assert result.exit_code == 5
    assert result.stderr == (
        f"Error: {tmp_path / 'x.bin'}: not a .gguf file; pass a GGUF file, an ONNX folder or a dist folder\n"
    )


def test_verify_a_dist_folder_by_path(built: dict, tmp_path: Path) -> None:
    result = run("-q", "verify", str(built["dist"]), "--out", str(tmp_path / "ok"))
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "ok" / "report.json").read_text())["passed"] is True
    # A shipped file altered after packaging: the dist's own checksums catch it.
    copy = tmp_path / "dist-copy"
    shutil.copytree(built["dist"], copy)
    gguf = copy / "gguf" / "micro-q8_0.gguf"
    data = bytearray(gguf.read_bytes())
    data[-100] ^= 0xFF
    gguf.write_bytes(bytes(data))
    result = run("verify", str(copy), "--out", str(tmp_path / "bad"))
    assert result.exit_code == 7
    assert f"gguf-q8_0: checksums: {gguf}: sha256 differs from the manifest" in result.stderr
