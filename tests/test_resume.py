"""A training run killed with SIGKILL continues with --resume and ends with the same adapter."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import EXAMPLE, write_config

from edgeft.cli import cli

pytestmark = pytest.mark.slow


def test_killed_run_resumes_to_the_same_adapter(tmp_path: Path, micro_model: Path) -> None:
    from safetensors.torch import load_file

    cfg = write_config(
        tmp_path / "edgeft.yaml",
        name="r",
        base_model="tiny:micro",
        workdir=str(tmp_path / "runs"),
        data={"train": str(EXAMPLE / "data" / "nl2sql.jsonl")},
        train={"max_steps": 24, "eval_steps": 4, "learning_rate": 0.003, "max_seq_length": 256},
    )
    whole = CliRunner().invoke(cli, ["-q", "train", "-c", str(cfg), "--out", str(tmp_path / "whole")])
    assert whole.exit_code == 0, whole.output

    out = tmp_path / "killed"
    partial = tmp_path / ".killed.partial"
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgeft", "-q", "train", "-c", str(cfg), "--out", str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=os.environ.copy(),
    )
    marker = partial / "checkpoints" / "checkpoint-8" / "trainer_state.json"
    deadline = time.time() + 300
    while not marker.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "training finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not out.exists() and partial.is_dir()  # nothing published, the work kept

    resumed = CliRunner().invoke(cli, ["train", "-c", str(cfg), "--out", str(out), "--resume"])
    assert resumed.exit_code == 0, resumed.output
    manifest = json.loads((out / "edgeft.json").read_text())
    assert manifest["metrics"]["resumed_from_step"] >= 8 and manifest["metrics"]["steps"] == 24
    # The mean training loss covers all 24 steps, not only the resumed ones.
    whole_loss = json.loads((tmp_path / "whole" / "edgeft.json").read_text())["metrics"]["train_loss"]
    assert manifest["metrics"]["train_loss"] == pytest.approx(whole_loss, abs=1e-4)
    assert not partial.exists()

    a = load_file(tmp_path / "whole" / "adapter" / "adapter_model.safetensors")
    b = load_file(out / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    # Same seed, same data order, and the optimizer, scheduler and RNG states restored from the
    # checkpoint: on one machine the result is bitwise identical. 1e-6 (vs weights ~0.1) leaves
    # room only for a different float reduction order, not for a replayed or skipped step.
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-6


def test_resume_without_an_interrupted_run_is_an_input_error(tmp_path: Path) -> None:
    cfg = write_config(
        tmp_path / "edgeft.yaml",
        name="r",
        base_model="tiny:micro",
        data={"train": str(EXAMPLE / "data" / "nl2sql.jsonl")},
    )
    result = CliRunner().invoke(cli, ["train", "-c", str(cfg), "--resume"])
    assert result.exit_code == 5
    assert result.stderr.endswith(
        f"Error: {tmp_path / 'runs' / 'r' / '.train.partial'}: no interrupted run "
        "to resume; run without --resume\n"
    )
