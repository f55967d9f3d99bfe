"""The dist's Java kit, compiled with OpenJDK and run through JNA against llama-cpp-python's libllama:
its greedy tokens must equal llama.cpp's Python bindings' for the same prompt."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import EXAMPLE, write_config

from edgeft.cli import cli

JNA = Path("/usr/share/java/jna.jar")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not JNA.is_file() or shutil.which("javac") is None,
                       reason="needs OpenJDK and Debian's libjna-java (scripts/setup.sh installs them as root)"),
]


def test_java_kit_generates_what_llama_cpp_python_generates(tmp_path: Path, micro_model: Path) -> None:
    import llama_cpp

    from edgeft.runtimes.llamacpp import LlamaCppRuntime

    cfg = write_config(tmp_path / "edgeft.yaml", name="kit", base_model="tiny:micro", workdir="runs",
                       dist_dir="dist", data={"train": str(EXAMPLE / "data" / "nl2sql.jsonl")},
                       train={"max_steps": 30, "learning_rate": 0.003, "max_seq_length": 256},
                       export={"gguf": {"types": ["q8_0"]}, "onnx": {"types": []}},
                       verify={"max_prompts": 2, "max_new_tokens": 16})
    result = CliRunner().invoke(cli, ["build", "-c", str(cfg)])
    assert result.exit_code == 0, result.output
    kit = tmp_path / "dist" / "kit" / "java"
    gguf = tmp_path / "dist" / "kit" / "gguf" / "kit-q8_0.gguf"
    subprocess.run(["sh", str(kit / "build.sh")], check=True, capture_output=True)

    question = "Convert the following natural language query into a SQL statement.\n\nList departments on floor 3."
    libdir = Path(llama_cpp.__file__).parent / "lib"
    proc = subprocess.run(
        ["java", "-cp", f"{kit / 'out'}:{JNA}", f"-Djna.library.path={libdir}", "edgeft.kit.Generate",
         str(gguf), question, "40"],
        capture_output=True, text=True, timeout=120, env={**os.environ, "LD_LIBRARY_PATH": str(libdir)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = dict(line.split(": ", 1) for line in proc.stdout.splitlines() if ": " in line)

    with LlamaCppRuntime(gguf) as rt:
        ids = rt.tokenize(rt.chat_prompt([{"role": "user", "content": question}]), add_special=False)
        tokens, stopped = rt.generate(ids, 40)
        text = rt.detokenize(tokens)
    assert lines["prompt_tokens"] == " ".join(map(str, ids))
    assert lines["tokens"] == " ".join(map(str, tokens))
    assert lines["text"] == text
    assert tokens  # the comparison means something only if something was generated
