"""llama.cpp's command-line tools, built by set-up from the pinned source package against the
llama-cpp-python wheel's own libraries (scripts/build_llama_tools.py): llama-quantize (importance
matrix, per-tensor types), llama-imatrix, llama-perplexity (verify's second opinion), llama-bench,
llama-server (what `edgeft serve` fronts).
They live in vendor/tools (EDGEFT_LLAMA_TOOLS overrides).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence
from pathlib import Path

from edgeft.core.errors import InputError, ToolError, full_disk, says_no_space
from edgeft.core.paths import REPO_ROOT
from edgeft.core.workdir import die_with_parent

TOOLS = ("llama-quantize", "llama-imatrix", "llama-perplexity", "llama-bench", "llama-server")


def tools_dir() -> Path:
    return Path(os.environ.get("EDGEFT_LLAMA_TOOLS", REPO_ROOT / "vendor" / "tools"))


def tool(name: str) -> Path:
    """The path of one of llama.cpp's tools; an InputError saying how to get it when it is missing."""
    path = tools_dir() / "bin" / name
    if not os.access(path, os.X_OK):
        raise InputError(
            f"{path}: llama.cpp's {name} is missing; run scripts/setup.sh (it builds llama.cpp's "
            f"tools from the pinned source package in about 75 seconds)"
        )
    return path


def source() -> dict[str, str]:
    """What the tools were built from (the SOURCE file set-up wrote): source package and wheel."""
    path = tools_dir() / "SOURCE"
    if not path.is_file():
        return {}
    return dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)


def version() -> str:
    """`llama-cpp-python==X (wheel sha256 …)`: one line for lineage records."""
    src = source()
    pkg = src.get("sdist", "?").removesuffix(".tar.gz").replace("llama_cpp_python-", "llama-cpp-python==")
    return f"{pkg} (wheel sha256 {src.get('wheel_sha256', '?')[:12]})"


def no_repack() -> list[str]:
    """The option that turns off llama.cpp's weight repacking (the AMX path that crashes on small
    models, see runtimes.llamacpp._no_weight_repacking) unless EDGEFT_LLAMA_REPACK=1."""
    return [] if os.environ.get("EDGEFT_LLAMA_REPACK") == "1" else ["--no-repack"]


def run(
    name: str, args: Sequence[object], what: str, timeout: float | None = None, writes: Path | None = None
) -> str:
    """Run a tool; its stdout and stderr together, or a ToolError with the end of its output (from
    an ENOSPC OSError when the folder it `writes` into is on a full disk)."""
    cmd = [str(tool(name)), *map(str, args)]
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, errors="replace", timeout=timeout, preexec_fn=die_with_parent
        )
    except subprocess.TimeoutExpired as e:
        raise ToolError(f"{name} on {what} did not finish in {timeout:.0f} s") from e
    output = proc.stdout + proc.stderr
    if proc.returncode != 0:
        lines = output.strip().splitlines()
        tail = "\n".join([line for line in lines if says_no_space(line)][-1:] or lines[-8:])
        raise ToolError(f"{name} failed on {what} (exit {proc.returncode}):\n{tail}") from (
            full_disk(writes) if writes is not None else None
        )
    return output


CONTEXT = 512  # tokens per chunk (llama-imatrix's and llama-perplexity's default)


def chunk_context(n_tokens: int) -> int:
    """Chunk length for llama-imatrix / llama-perplexity over `n_tokens` of text: CONTEXT, halved
    (down to 64) until the text holds the two chunks both tools need at least."""
    ctx = CONTEXT
    while ctx > 64 and n_tokens < 2 * ctx:
        ctx //= 2
    return ctx


def count_tokens(model: Path, text_file: Path, special: bool = True) -> int:
    """Tokens of the text as llama.cpp tokenises it (`special`: special tokens parsed), with llama-cpp-python."""
    from edgeft.models.vocab import VocabOnly

    with VocabOnly(model) as vocab:
        if vocab.model is None:
            raise ToolError(f"{model}: llama.cpp does not load its vocabulary ({vocab.refusal})")
        return len(vocab.tokenize(text_file.read_text(encoding="utf-8"), parse_special=special))
