"""Preference tuning (DPO) after SFT through `edgeft build` on the micro model: the align stage, what
merge and the dist carry from it, preference parity in eval, and a file that lost the trained
preference failing the gate."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import EXAMPLE, resign, write_config

from edgeft.cli import cli

pytestmark = pytest.mark.slow

PAIRS = EXAMPLE / "data" / "nl2sql-pairs.jsonl"


def _build(root: Path, pairs: Path, onnx: list[str]) -> Path:
    root.mkdir()
    cfg = write_config(
        root / "edgeft.yaml",
        name="micro-dpo",
        base_model="tiny:micro",
        workdir="runs",
        dist_dir="dist",
        data={"train": str(EXAMPLE / "data" / "nl2sql.jsonl")},
        train={"max_steps": 30, "learning_rate": 0.003, "max_seq_length": 256},
        # A large step for a model this small: 60 steps take the held-out reward accuracy from chance
        # (the reference is the policy at step 0) to measured 0.97 here.
        align={"pairs": str(pairs), "max_steps": 60, "learning_rate": 0.003, "val_ratio": 0.2},
        # Lossless types only: the micro model's flat distributions make a q8_0's greedy replies
        # diverge at near-ties, which verify's generation check rightly reports.
        export={"gguf": {"types": ["f16"]}, "onnx": {"types": onnx}},
        verify={"max_prompts": 4, "max_new_tokens": 24},
        eval={"max_examples": 60, "max_new_tokens": 24},
    )
    result = CliRunner().invoke(cli, ["build", "-c", str(cfg)])
    assert result.exit_code == 0, result.output
    assert "ran train, align, merge" in result.stderr
    return cfg


def test_dpo_after_sft_builds_and_eval_scores_the_preference_in_every_runtime(tmp_path: Path) -> None:
    cfg = _build(tmp_path / "a", PAIRS, ["fp32"])
    runs = tmp_path / "a" / "runs" / "micro-dpo"
    align = json.loads((runs / "align" / "edgeft.json").read_text())
    record = align["metrics"]["align"]
    assert record["steps"] == 60 and record["train_pairs"] == 240 and record["validation_pairs"] == 60
    # The reference is the SFT model itself: before the first step the DPO loss is log 2 exactly.
    assert record["val_loss_before"] == pytest.approx(0.69315, abs=1e-4)
    health = record["health"]
    assert health["healthy"] and health["accuracy"] > 0.5 and health["margin"] > 0, health
    assert (runs / "align" / "reports" / "loss.png").stat().st_size > 0
    # The tuned adapter is what merge merged, and the held-out pairs travel on to eval.
    merge = json.loads((runs / "merge" / "edgeft.json").read_text())
    assert Path(merge["parent"]).name == "align"
    assert {"adapter", "pairs-validation"} <= {a["name"] for a in merge["artifacts"]}

    results = json.loads((runs / "eval" / "results.json").read_text())
    pref = results["preference"]
    assert pref["pairs"] == 60
    assert set(pref["models"]) == {"fine-tuned", "sft", "base", "gguf-f16", "onnx-fp32"}
    tuned = pref["models"]["fine-tuned"]
    # DPO moved the log-probability margin of chosen over rejected up from where SFT left it.
    assert tuned["mean_margin"] > pref["models"]["sft"]["mean_margin"]
    for name in ("gguf-f16", "onnx-fp32"):  # lossless files score the same token ids alike
        assert pref["models"][name]["right"] == tuned["right"], name
        assert pref["paired"][name]["losses"] == 0 and not pref["paired"][name]["worse"]
    assert set(pref["versus"]) == {"sft", "base"} and "sft" in results["models"] and "versus_sft" in results
    dist = tmp_path / "a" / "dist" / "micro-dpo"
    card = (dist / "README.md").read_text()
    assert "preference tuning: DPO (sigmoid loss" in card and "## Preference parity (held-out pairs)" in card
    manifest = json.loads((dist / "manifest.json").read_text())
    assert manifest["lineage"]["training"]["align"]["health"]["healthy"]
    assert manifest["evaluation"]["preference"]["pairs"] == 60

    # A file that lost the trained preference: the f16 GGUF of a model tuned on the pairs swapped
    # (chosen and rejected exchanged), signed as if it were this build's. eval fails, naming it.
    swapped = tmp_path / "swapped.jsonl"
    swapped.write_text(
        "".join(
            json.dumps({"prompt": r["prompt"], "chosen": r["rejected"], "rejected": r["chosen"]}) + "\n"
            for r in map(json.loads, PAIRS.read_text().splitlines())
        )
    )
    # From the same SFT adapter: align, merge and export only (what verify would say is not the point).
    b = tmp_path / "b"
    swap = ("-c", str(cfg), "--set", f"align.pairs={swapped}")
    for command in (
        ["align", "--train-dir", str(runs / "train"), "--out", str(b / "align")],
        ["merge", "--train-dir", str(b / "align"), "--out", str(b / "merge")],
        ["export", "gguf", "--merge-dir", str(b / "merge"), "--out", str(b / "gguf")],
    ):
        result = CliRunner().invoke(cli, [*command, *swap])
        assert result.exit_code == 0, (command, result.output)
    gguf_a = runs / "export-gguf" / "micro-dpo-f16.gguf"
    shutil.copy(b / "gguf" / "micro-dpo-f16.gguf", gguf_a)
    resign(runs / "export-gguf", gguf_a.name)
    result = CliRunner().invoke(cli, ["eval", "-c", str(cfg)])
    assert result.exit_code == 8, result.output
    assert "gguf-f16: preference accuracy worse than the fine-tuned model" in result.output
    pref = json.loads((runs / "eval" / "results.json").read_text())["preference"]
    assert pref["paired"]["gguf-f16"]["worse"] and not pref["paired"]["onnx-fp32"]["worse"]


@pytest.mark.parametrize("method", ["qlora", "full"])
def test_dpo_continues_a_qlora_adapter_and_a_full_fine_tune(tmp_path: Path, method: str) -> None:
    """QLoRA: the SFT adapter and its frozen copy on one 4-bit base (trl's setup for PEFT); full: a
    second, frozen copy of the model. Either way merge takes the tuned weights."""
    cfg = write_config(
        tmp_path / "edgeft.yaml",
        name="m",
        base_model="tiny:micro",
        workdir="runs",
        data={"train": str(EXAMPLE / "data" / "nl2sql.jsonl")},
        train={"method": method, "max_steps": 2, "max_seq_length": 256},
        align={"pairs": str(PAIRS), "max_steps": 2, "learning_rate": 0.001, "val_ratio": 0.2},
    )
    # (merge after QLoRA compares two strategies on the 4-bit base: tested in test_pipeline, not again)
    for command in ("train", "align") if method == "qlora" else ("train", "align", "merge"):
        result = CliRunner().invoke(cli, [command, "-c", str(cfg)])
        assert result.exit_code == 0, (command, result.output)
    runs = tmp_path / "runs" / "m"
    align = json.loads((runs / "align" / "edgeft.json").read_text())
    # The reference is the SFT model: the loss starts at log 2 (on a 4-bit base trl holds the trained
    # adapter in bf16 and its frozen copy as saved: measured 0.69304, a rounding apart).
    assert align["metrics"]["align"]["val_loss_before"] == pytest.approx(0.69315, abs=1e-3)
    weights = "model" if method == "full" else "adapter"
    assert weights in {a["name"] for a in align["artifacts"]}
    if method == "qlora":
        assert next(a for a in align["artifacts"] if a["name"] == "adapter")["quantization"] == "nf4"
    else:
        merge = json.loads((runs / "merge" / "edgeft.json").read_text())
        assert Path(merge["parent"]).name == "align"


def test_preferences_after_training_on_plain_text_are_refused(tmp_path: Path) -> None:
    """Pairs are rendered with the chat template: a model trained on plain text never saw it."""
    data = tmp_path / "text.jsonl"
    data.write_text(
        "".join(json.dumps({"text": f"select {i} from t where x = {i};"}) + "\n" for i in range(20))
    )
    cfg = write_config(
        tmp_path / "edgeft.yaml",
        name="m",
        base_model="tiny:micro",
        workdir="runs",
        data={"train": str(data)},
        train={"max_steps": 2, "max_seq_length": 64},
        align={"pairs": str(PAIRS)},
    )
    assert CliRunner().invoke(cli, ["train", "-c", str(cfg)]).exit_code == 0
    result = CliRunner().invoke(cli, ["align", "-c", str(cfg)])
    assert result.exit_code == 3 and "trained on plain text rows" in result.output, result.output
    assert not (tmp_path / "runs" / "m" / "align").exists()
