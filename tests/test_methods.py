"""The training methods beside LoRA: QLoRA spelled as a method, DoRA, and full fine-tuning, each
through the same merge / export / verify / eval path (a full fine-tune has nothing to merge)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import EXAMPLE, write_config

from edgeft.cli import cli
from edgeft.core.config import parse_config
from edgeft.core.errors import ConfigError

BASE = {"name": "m", "base_model": "tiny:micro", "data": {"train": "x.jsonl"}}


def test_method_defaults_and_refusals() -> None:
    def train(**kw):
        return parse_config({**BASE, "train": kw}).train

    assert (train().method, train().quantization, train().learning_rate) == ("lora", "none", 1e-3)
    assert (train(method="qlora").quantization, train(method="qlora", quantization="fp4").quantization) == (
        "nf4",
        "fp4",
    )
    assert train(quantization="nf4").method == "qlora"  # how QLoRA was asked for before train.method
    assert (train(method="full").learning_rate, train(method="full", learning_rate=1e-4).learning_rate) == (
        5e-5,
        1e-4,
    )
    assert train(learning_rate="2e-4").learning_rate == 2e-4  # how PyYAML reads `learning_rate: 2e-4`
    for raw, message in [
        ({"train": {"method": "full", "quantization": "nf4"}}, "train.quantization: nf4 trains"),
        ({"train": {"method": "full", "dora": True}}, "train.dora: DoRA is a kind of adapter"),
        ({"train": {"method": "full"}, "export": {"gguf": {"lora": True}}}, "trains no adapter"),
        ({"train": {"dora": True}, "export": {"gguf": {"lora": True}}}, "no DoRA magnitude"),
        ({"train": {"method": "prefix"}}, "train.method: 'prefix' is not one of lora, qlora, full"),
    ]:
        with pytest.raises(ConfigError, match=message):
            parse_config({**BASE, **raw})


@pytest.mark.slow
def test_full_fine_tune_builds_end_to_end(tmp_path: Path, micro_model: Path) -> None:
    """`edgeft build` with train.method: full on the micro model: every weight trained, no adapter
    anywhere, the trained model verified and evaluated as the reference; data.filter's counts and
    the typo augmentation's in the dist's lineage, the augmented rows marked in the train split."""
    cfg = write_config(
        tmp_path / "edgeft.yaml",
        name="full",
        base_model="tiny:micro",
        workdir="runs",
        dist_dir="dist",
        data={
            "train": str(EXAMPLE / "data" / "nl2sql.jsonl"),
            "filter": "len(output) > 50",
            "augment": {"typos": 1},
        },
        train={"method": "full", "max_steps": 30, "learning_rate": 3e-3, "max_seq_length": 256},
        export={"gguf": {"types": ["f16", "q8_0"]}, "onnx": {"types": ["fp32"]}},
        verify={"max_prompts": 3, "max_new_tokens": 16},
    )
    result = CliRunner().invoke(cli, ["build", "-c", str(cfg)])
    assert result.exit_code == 0, result.output
    runs = tmp_path / "runs" / "full"
    train = json.loads((runs / "train" / "edgeft.json").read_text())
    assert [a["name"] for a in train["artifacts"]][0] == "model" and not (runs / "train" / "adapter").exists()
    m = train["metrics"]
    assert m["method"] == "full" and m["val_loss"] < m["base_val_loss"]
    import math

    from safetensors import safe_open

    with safe_open(runs / "train" / "model" / "model.safetensors", framework="np") as st:
        stored = sum(math.prod(st.get_slice(k).get_shape()) for k in st.keys())
    assert m["trainable_parameters"] == stored  # every weight of the model trained, all of them saved
    merge = json.loads((runs / "merge" / "edgeft.json").read_text())
    assert [a["name"] for a in merge["artifacts"]] == ["model", "validation-split"]
    dist = Path(result.stdout.strip())
    manifest = json.loads((dist / "manifest.json").read_text())
    lineage = manifest["lineage"]
    assert lineage["method"] == "full" and lineage["adapter"] is None
    filtered = lineage["dataset"]["filter"]
    rows = filtered["train"]
    assert filtered["conditions"] == ["len(output) > 50"] and 0 < rows["dropped"] < rows["rows"] == 400
    data = lineage["dataset"]
    assert data["train_rows"] - data["augmented_rows"] + data["validation_rows"] == rows["kept"]
    assert data["augmented_rows"] == data["augmentation"]["typos"]["rows_added"] > 0
    split = [json.loads(line) for line in (runs / "train" / "train.jsonl").read_text().splitlines()]
    assert sum(r.get("augmented") == "typos" for r in split) == data["augmented_rows"]
    assert "augmented" not in (runs / "train" / "validation.jsonl").read_text()  # never augmented
    assert manifest["verify"]["passed"] and manifest["evaluation"]["passed"]
    assert "full fine-tune (every weight)" in (dist / "README.md").read_text()


@pytest.mark.slow
def test_dora_adapter_merges_into_what_was_trained(built: dict, tmp_path: Path) -> None:
    """DoRA (peft's use_dora): the adapter carries a magnitude per output row, and the merged
    model computes what the adapter on its base computes."""
    import torch
    from peft import PeftModel
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM

    out, merged = tmp_path / "dora", tmp_path / "merged"
    result = CliRunner().invoke(
        cli,
        [
            "train",
            "-c",
            str(built["config"]),
            "--set",
            "train.dora=true",
            "--set",
            "train.max_steps=8",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    stage = json.loads((out / "edgeft.json").read_text())
    assert (
        stage["artifacts"][0]["dora"] is True
        and stage["metrics"]["val_loss"] < stage["metrics"]["base_val_loss"]
    )
    with safe_open(out / "adapter" / "adapter_model.safetensors", framework="np") as st:
        assert any("lora_magnitude_vector" in k for k in st.keys())
    result = CliRunner().invoke(
        cli, ["merge", "-c", str(built["config"]), "--train-dir", str(out), "--out", str(merged)]
    )
    assert result.exit_code == 0, result.output
    base = AutoModelForCausalLM.from_pretrained(stage["resolved_base"], dtype=torch.float32)
    adapted = PeftModel.from_pretrained(base, out / "adapter").eval()
    model = AutoModelForCausalLM.from_pretrained(merged / "model", dtype=torch.float32).eval()
    ids = torch.randint(5, model.config.vocab_size, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want, got = adapted(ids).logits, model(ids).logits
    # Float rounding only (the merge folds magnitude / ||W + BA|| into the weights).
    assert float((want - got).abs().max()) < 1e-4 * max(1.0, float(want.abs().max()))
