"""The importance matrix llama.cpp's quantizer weighs rounding errors with, computed on the user's task.

`export.gguf.imatrix: auto` renders the training split with the model's own chat template (the text
the model will see in production: special tokens parsed as special tokens), optionally followed by a
general text file (`export.gguf.imatrix_text`), and runs llama-imatrix on the unquantized GGUF over
at most `export.gguf.imatrix_tokens` of it: when the split renders to more, its rows are taken in a
seeded random order, so the budget holds a sample of the whole split rather than its beginning. `imatrix: PATH` takes a matrix the user made (llama.cpp's GGUF or legacy .dat format); `none`
quantizes without one. The matrix is kept in the export stage and the dist, and its lineage (data
hash, token count, chunks, tool version) goes into the manifest and every GGUF quantized with it.
"""

from __future__ import annotations

import hashlib
import logging
import time
from pathlib import Path
from typing import Any

from edgeft.core import formats
from edgeft.core.config import Config
from edgeft.core.errors import InputError, ToolError
from edgeft.core.fileio import copy_file, sha256_file
from edgeft.data.rows import read_split
from edgeft.models import llama_tools

log = logging.getLogger(__name__)


def render_training_text(
    train_split: Path,
    tokenizer: Any,
    general_text: Path | None = None,
    budget: int | None = None,
    seed: int = 0,
) -> str:
    """The training conversations as the model sees them (chat template applied), one after the
    other, then the optional general text. With a token `budget` the split renders to more than,
    its rows in a seeded random order (the matrix is computed on the text's first `budget` tokens)."""
    import random

    parts = []
    for row in read_split(train_split):
        if "messages" in row:
            parts.append(tokenizer.apply_chat_template(row["messages"], tokenize=False))
        elif row.get("text"):
            parts.append(row["text"])
    if budget is not None and sum(map(len, tokenizer(parts, add_special_tokens=False)["input_ids"])) > budget:
        random.Random(seed).shuffle(parts)
    if general_text is not None:
        parts.append(general_text.read_text(encoding="utf-8"))
    return "\n".join(parts)


def compute(model: Path, text: str, out: Path, budget: int | None = None) -> dict[str, Any]:
    """llama-imatrix on `model` (an unquantized GGUF) over `text` (its first `budget` tokens); the
    matrix's lineage."""
    text_file = out.with_suffix(".txt")
    text_file.write_text(text, encoding="utf-8")
    n_tokens = llama_tools.count_tokens(model, text_file)
    ctx = llama_tools.chunk_context(n_tokens)
    if n_tokens < 2 * ctx:
        raise InputError(
            f"the training split renders to {n_tokens} tokens: too few for an importance matrix "
            f"(at least {2 * ctx}); set export.gguf.imatrix: none, or add export.gguf.imatrix_text"
        )
    chunks = min(n_tokens, budget or n_tokens) // ctx
    log.info(
        "computing the importance matrix on %d chunks of %d tokens (of %d) with llama-imatrix",
        chunks,
        ctx,
        n_tokens,
    )
    start = time.monotonic()
    args = [
        "-m",
        model,
        "-f",
        text_file,
        "-o",
        out,
        "-c",
        ctx,
        "-b",
        ctx,
        "--chunks",
        chunks,
        "--parse-special",
        "--no-ppl",
        "--output-frequency",
        1_000_000,
        *llama_tools.no_repack(),
    ]
    llama_tools.run("llama-imatrix", args, model.name, writes=out.parent)
    if not out.is_file():
        raise ToolError(f"llama-imatrix wrote no matrix for {model.name}")
    data_sha = hashlib.sha256(text.encode("utf-8")).hexdigest()
    text_file.unlink()
    return {
        "source": "auto",
        "file": out.name,
        "sha256": sha256_file(out),
        "data_sha256": data_sha,
        "tokens": chunks * ctx,
        "tokens_available": n_tokens,
        "chunks": chunks,
        "context": ctx,
        "seconds": round(time.monotonic() - start, 1),
        "tool": llama_tools.version(),
    }


def given(path: Path, out: Path) -> dict[str, Any]:
    """A matrix the user made: copied into the stage; its lineage is what the file says."""
    if not path.is_file():
        raise InputError(
            f"export.gguf.imatrix: {path} does not exist (give llama-imatrix's output, auto or none)"
        )
    return {"source": str(path), "file": out.name, "sha256": copy_file(path, out), "tool": "given"}


def make(
    cfg: Config, f32: Path, train_split: Path | None, tokenizer: Any, folder: Path
) -> dict[str, Any] | None:
    """The matrix the config asks for, written into `folder`, and its lineage (None: no matrix)."""
    setting = cfg.export.gguf.imatrix
    types = set(cfg.export.gguf.types)
    if setting == "none" or not types & set(formats.USES_MATRIX):
        return None
    out = folder / f"{cfg.name}-imatrix.gguf"
    if setting != "auto":
        return given(cfg.path(setting), out)
    if train_split is None or not train_split.is_file():
        raise InputError(
            "export.gguf.imatrix: auto needs the train stage's train.jsonl; run edgeft train, "
            "or give a matrix file"
        )
    general = cfg.path(cfg.export.gguf.imatrix_text) if cfg.export.gguf.imatrix_text else None
    if general is not None and not general.is_file():
        raise InputError(f"export.gguf.imatrix_text: {general} does not exist")
    budget = cfg.export.gguf.imatrix_tokens
    if general is not None:
        log.info(
            "export.gguf.imatrix_text follows the training split: only what fits in export.gguf.imatrix_tokens "
            "(%d) is used; raise it to include all of it",
            budget,
        )
    return compute(
        f32, render_training_text(train_split, tokenizer, general, budget, cfg.data.seed), out, budget
    )


def metadata_overrides(lineage: dict[str, Any]) -> list[str]:
    """llama-quantize --override-kv values recording the matrix's lineage in the GGUF
    (llama-quantize itself adds quantize.imatrix.file/dataset/entries_count/chunks_count)."""
    kv = [f"edgeft.imatrix.sha256=str:{lineage['sha256']}", f"edgeft.imatrix.source=str:{lineage['source']}"]
    if "data_sha256" in lineage:
        kv += [
            f"edgeft.imatrix.data_sha256=str:{lineage['data_sha256']}",
            f"edgeft.imatrix.tokens=int:{lineage['tokens']}",
        ]
    return kv
