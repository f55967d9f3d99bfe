"""What only a GPU runs: QLoRA on CUDA (bitsandbytes' GPU kernels under a bf16 compute type).
Marked `gpu` and skipped where torch sees no CUDA device (CI never has one)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgeft.cli import cli

pytestmark = [pytest.mark.gpu, pytest.mark.slow]


def test_qlora_trains_on_the_gpu(built: dict, tmp_path: Path) -> None:
    out = tmp_path / "qlora-gpu"
    args = [
        "train",
        "-c",
        str(built["config"]),
        "--set",
        "train.quantization=nf4",
        "--set",
        "train.max_steps=6",
    ]
    result = CliRunner().invoke(cli, [*args, "--out", str(out)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "edgeft.json").read_text())
    assert manifest["base_loaded_as"]["layers"].get("Linear4bit", 0) == 14  # 7 per layer, 2 layers
    assert manifest["metrics"]["val_loss"] < manifest["metrics"]["base_val_loss"]
    # On CUDA the recorded peak is the GPU's allocated peak: a few MB for the tiny model, where the
    # CPU's figure is the process's resident set (hundreds of MB with torch loaded).
    assert 0 < manifest["metrics"]["peak_memory_mb"] < 200
