"""A second opinion on verify's KL for GGUF files: llama.cpp's own llama-perplexity.

`edgeft verify --second-opinion` (or `verify.second_opinion: true`) runs llama-perplexity
`--kl-divergence` as an independent client: llama.cpp converts the merged model to an f32 GGUF,
llama-perplexity stores its log-probabilities over the held-out text (the validation conversations
as plain text, in chunks of `context` tokens, KL on the second half of each chunk: its method), then
compares every GGUF against them. edgeft measures the same tokens at the same positions its own way
(transformers fp32 reference, llama-cpp-python for the file). The two mean KLs must agree within
TOLERANCE: a disagreement means one of the two measurements is wrong (a runtime wired differently,
a converter that changed the reference), and fails the artifact's `second_opinion` check.
"""

from __future__ import annotations

import logging
import re
import struct
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from edgeft.core.errors import InputError, ToolError
from edgeft.judge.kl import kl_stats, summarise
from edgeft.models import llama_tools

log = logging.getLogger(__name__)

# |edgeft − llama-perplexity| ≤ RELATIVE × the larger + ABSOLUTE, on mean KL. The references differ
# (transformers fp32 vs llama.cpp's f32 GGUF: KL ~4e-6 on SmolLM2), llama-perplexity stores the
# reference's log-probabilities as 16-bit steps and evaluates in other batch sizes; measured gaps
# are in docs/parity-gate.md.
RELATIVE, ABSOLUTE = 0.05, 1e-3
MAX_CHUNKS = 8
MIN_POSITIONS = 100  # llama-perplexity prints no statistics below this (kl_divergence: "so few values")


def held_out_text(conversations: list[list[dict[str, str]]]) -> str:
    """The conversations' turns as plain text: llama-perplexity does not parse special tokens."""
    return "\n\n".join("\n".join(m["content"] for m in c) for c in conversations)


def _read_tokens(base: Path) -> tuple[int, int, np.ndarray]:
    """(context, chunks, tokens) from llama-perplexity's --kl-divergence-base file header."""
    with base.open("rb") as f:
        if f.read(8) != b"_logits_":
            raise ToolError(f"{base}: not a llama-perplexity logits file")
        (n_ctx,) = struct.unpack("<i", f.read(4))
        _n_vocab, n_chunk = struct.unpack("<ii", f.read(8))
        tokens = np.frombuffer(f.read(4 * n_ctx * n_chunk), dtype=np.int32)
    return n_ctx, n_chunk, tokens


def _parse(output: str) -> dict[str, float]:
    def grab(pattern: str) -> float | None:
        m = re.search(pattern, output)
        return float(m.group(1)) if m else None

    out = {
        "kl_mean": grab(r"Mean\s+KLD:\s+([-0-9.e]+)"),
        "kl_p99": grab(r"99\.0%\s+KLD:\s+([-0-9.e]+)"),
        "top1": grab(r"Same top p:\s+([-0-9.e]+)"),
    }
    if out["kl_mean"] is None:
        raise ToolError(
            f"llama-perplexity --kl-divergence printed no mean KLD (it prints none for fewer than "
            f"{MIN_POSITIONS} positions); its output ended:\n" + "\n".join(output.strip().splitlines()[-6:])
        )
    if out["top1"] is not None:
        out["top1"] /= 100
    return {k: v for k, v in out.items() if v is not None}


def run(
    model_dir: Path,
    ggufs: dict[str, Path],
    conversations: list[list[dict[str, str]]],
    name: str = "reference",
) -> dict[str, dict[str, Any]]:
    """Per GGUF: llama-perplexity's and edgeft's KL on the same tokens, and whether they agree."""
    from edgeft.pipeline.export.gguf import convert_hf
    from edgeft.runtimes.hf import HFRuntime
    from edgeft.runtimes.llamacpp import LlamaCppRuntime

    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="edgeft-second-opinion-") as tmp:
        work = Path(tmp)
        ref_gguf = work / "reference-f32.gguf"
        log.info("second opinion: llama.cpp's converter makes the f32 reference GGUF")
        convert_hf(model_dir, ref_gguf, name, outtype="f32")
        text = work / "held-out.txt"
        text.write_text(held_out_text(conversations), encoding="utf-8")
        ctx = llama_tools.chunk_context(llama_tools.count_tokens(ref_gguf, text, special=False))
        base = work / "reference.kld"
        common = ["-c", ctx, "-b", ctx, *llama_tools.no_repack()]
        llama_tools.run(
            "llama-perplexity",
            ["-m", ref_gguf, "-f", text, "--chunks", MAX_CHUNKS, "--kl-divergence-base", base, *common],
            "the f32 reference",
        )
        n_ctx, n_chunk, tokens = _read_tokens(base)
        first = n_ctx // 2  # llama-perplexity's KL covers positions first .. n_ctx - 2 of each chunk
        if n_chunk * (n_ctx - 1 - first) < MIN_POSITIONS:
            raise InputError(
                f"the validation split is too short for the second opinion: {n_chunk} chunks of {n_ctx} "
                f"tokens give fewer than {MIN_POSITIONS} positions; add validation rows (data.val_ratio) "
                "or turn verify.second_opinion off"
            )
        chunks = [tokens[i * n_ctx : (i + 1) * n_ctx].tolist() for i in range(n_chunk)]
        vocab = LlamaCppRuntime(ref_gguf, n_ctx=n_ctx)
        bos = vocab.bos_added()  # llama-perplexity puts it first in every chunk
        vocab.close()
        if bos is not None:
            chunks = [[bos, *c[1:]] for c in chunks]
        with HFRuntime(model_dir) as ref:
            reference = [r[first : n_ctx - 1] for r in ref.logits_many(chunks)]
        for art, path in ggufs.items():
            log.info(
                "second opinion: llama-perplexity --kl-divergence on %s (%d chunks of %d tokens)",
                art,
                n_chunk,
                n_ctx,
            )
            theirs = _parse(
                llama_tools.run(
                    "llama-perplexity",
                    ["-m", path, "--kl-divergence-base", base, "--kl-divergence", *common],
                    art,
                )
            )
            with LlamaCppRuntime(path, n_ctx=n_ctx) as rt:
                stats = [
                    kl_stats(r, rt.logits(c)[first : n_ctx - 1])
                    for r, c in zip(reference, chunks, strict=True)
                ]
            ours = {
                k: v for k, v in summarise(stats).items() if k in ("kl_mean", "kl_p99", "top1", "positions")
            }
            gap = abs(ours["kl_mean"] - theirs["kl_mean"])
            limit = RELATIVE * max(ours["kl_mean"], theirs["kl_mean"]) + ABSOLUTE
            results[art] = {
                "llama_perplexity": theirs,
                "edgeft": ours,
                "positions": ours["positions"],
                "context": n_ctx,
                "chunks": n_chunk,
                "gap": gap,
                "limit": limit,
                "agree": gap <= limit,
            }
    return results
