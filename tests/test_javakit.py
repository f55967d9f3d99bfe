"""The dist's Java kit, compiled with OpenJDK and run through JNA against llama-cpp-python's libllama:
its greedy tokens must equal llama.cpp's Python bindings' for the same prompt."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import EXAMPLE, without_template, write_config

from edgeft.cli import cli

JNA = Path("/usr/share/java/jna.jar")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not JNA.is_file() or shutil.which("javac") is None,
        reason="needs OpenJDK and Debian's libjna-java (scripts/setup.sh installs them as root)",
    ),
]


QUESTION = (
    "Convert the following natural language query into a SQL statement.\n\nList departments on floor 3."
)


def _build(root: Path, base: str, onnx: list[str]) -> Path:
    cfg = write_config(
        root / "edgeft.yaml",
        name="kit",
        base_model=base,
        workdir="runs",
        dist_dir="dist",
        data={"train": str(EXAMPLE / "data" / "nl2sql.jsonl")},
        train={"max_steps": 30, "learning_rate": 0.003, "max_seq_length": 256},
        export={"gguf": {"types": ["q8_0"]}, "onnx": {"types": onnx}},
        verify={"max_prompts": 2, "max_new_tokens": 16},
        eval={"max_examples": 4},
    )
    result = CliRunner().invoke(cli, ["build", "-c", str(cfg)])
    assert result.exit_code == 0, result.output
    subprocess.run(["sh", str(root / "dist" / "kit" / "java" / "build.sh")], check=True, capture_output=True)
    return root / "dist" / "kit"


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory, micro_model: Path) -> Path:
    """A dist with a GGUF and an onnxruntime-genai int4 folder, and its Java kit compiled."""
    return _build(tmp_path_factory.mktemp("javakit"), "tiny:micro", ["int4"])


def _reference_prompt(dist: Path) -> list[int]:
    """The prompt ids the model was trained with: transformers' rendering of the merged model's template."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(dist.parent.parent / "runs" / "kit" / "merge" / "model")
    return tok.apply_chat_template([{"role": "user", "content": QUESTION}], add_generation_prompt=True)


def _java(dist: Path, main: str, target: Path, libdir: Path, env: dict[str, str]) -> dict[str, str]:
    proc = subprocess.run(
        [
            "java",
            "-cp",
            f"{dist / 'java' / 'out'}:{JNA}",
            f"-Djna.library.path={libdir}",
            main,
            str(target),
            QUESTION,
            "40",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **env},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return dict(line.split(": ", 1) for line in proc.stdout.splitlines() if ": " in line)


def test_java_kit_generates_what_llama_cpp_python_generates(dist: Path) -> None:
    import llama_cpp

    from edgeft.runtimes.llamacpp import LlamaCppRuntime

    gguf = dist / "gguf" / "kit-q8_0.gguf"
    libdir = Path(llama_cpp.__file__).parent / "lib"
    lines = _java(dist, "edgeft.kit.Generate", gguf, libdir, {"LD_LIBRARY_PATH": str(libdir)})
    with LlamaCppRuntime(gguf) as rt:
        ids = rt.tokenize(rt.chat_prompt([{"role": "user", "content": QUESTION}]), add_special=False)
        tokens, stopped = rt.generate(ids, 40)
        text = rt.detokenize(tokens)
    assert lines["prompt_tokens"] == " ".join(map(str, ids)) == " ".join(map(str, _reference_prompt(dist)))
    assert lines["tokens"] == " ".join(map(str, tokens))
    assert lines["text"] == text
    assert tokens  # the comparison means something only if something was generated


def test_java_kit_prompt_with_edgefts_default_template(tmp_path: Path, micro_model: Path) -> None:
    """A base without a chat template gets edgeft's `### User:` template, which llama.cpp's built-in
    matcher does not know: the kit's prompt pieces still give transformers' exact prompt ids."""
    import llama_cpp

    bare = without_template(micro_model, tmp_path / "bare", family_tokens=False)
    dist = _build(tmp_path, str(bare), [])
    from edgeft.models.prompt_format import from_properties

    fmt = from_properties((dist / "java" / "prompt-format.properties").read_text())
    assert fmt["user.prefix"] == "### User:\n" and fmt["generation"] == "### Assistant:\n"
    libdir = Path(llama_cpp.__file__).parent / "lib"
    lines = _java(
        dist, "edgeft.kit.Generate", dist / "gguf" / "kit-q8_0.gguf", libdir, {"LD_LIBRARY_PATH": str(libdir)}
    )
    assert lines["prompt_tokens"] == " ".join(map(str, _reference_prompt(dist)))


def test_java_kit_runs_the_genai_folder_like_ort_genai_python(dist: Path) -> None:
    import onnxruntime
    import onnxruntime_genai

    from edgeft.runtimes.genai import GenAIRuntime

    folder = dist / "onnx" / "onnx-int4"
    ort_lib = next((Path(onnxruntime.__file__).parent / "capi").glob("libonnxruntime.so*"))
    lines = _java(
        dist,
        "edgeft.kit.GenerateGenAI",
        folder,
        Path(onnxruntime_genai.__file__).parent,
        {"ORT_LIB_PATH": str(ort_lib)},
    )
    rt = GenAIRuntime(folder)
    ids = rt.tokenize(rt.chat_prompt([{"role": "user", "content": QUESTION}]), add_special=False)
    tokens, _ = rt.generate(ids, 40)
    assert lines["prompt_tokens"] == " ".join(map(str, ids))
    assert lines["tokens"] == " ".join(map(str, tokens))
    assert lines["text"] == rt.detokenize(tokens)
    assert tokens
    assert "GenerateGenAI ../onnx/onnx-int4" in (dist / "java" / "README.md").read_text()
