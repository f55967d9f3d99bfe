"""The same `edgeft train` under `accelerate launch` with 2 CPU processes (DDP over gloo)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import EXAMPLE, write_config

from edgeft.cli import cli

pytestmark = pytest.mark.slow


def test_two_process_training_produces_a_usable_adapter(tmp_path: Path, micro_model: Path) -> None:
    cfg = write_config(
        tmp_path / "edgeft.yaml",
        name="ddp",
        base_model="tiny:micro",
        workdir=str(tmp_path / "runs"),
        data={"train": str(EXAMPLE / "data" / "nl2sql.jsonl")},
        train={"max_steps": 12, "eval_steps": 6, "learning_rate": 0.003, "max_seq_length": 256},
    )
    # --multi_gpu selects accelerate's torchrun launcher; with no CUDA each process trains on
    # the CPU and the group talks over gloo.
    with socket.socket() as s:  # a free port: the default 29500 may still be held by an earlier run
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_ip",
        "127.0.0.1",
        "--main_process_port",
        str(port),
        "-m",
        "edgeft",
        "-q",
        "train",
        "-c",
        str(cfg),
    ]
    proc = subprocess.run(
        cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    train_dir = tmp_path / "runs" / "ddp" / "train"
    assert proc.stdout.strip() == str(train_dir)  # printed once, by the main process
    manifest = json.loads((train_dir / "edgeft.json").read_text())
    assert manifest["metrics"]["processes"] == 2
    assert manifest["metrics"]["val_loss"] < manifest["metrics"]["base_val_loss"]
    merged = CliRunner().invoke(cli, ["merge", "-c", str(cfg)])
    assert merged.exit_code == 0, merged.output
    assert (tmp_path / "runs" / "ddp" / "merge" / "model" / "model.safetensors").is_file()
