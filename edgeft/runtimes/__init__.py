"""One interface over the runtimes a consumer loads an artifact in: HF transformers, llama.cpp, ONNX Runtime.

verify (and later evaluate) loop over `Runtime`s without knowing which is which. Every
runtime uses the artifact's *own* tokenizer, chat template and stop tokens, never the
reference's: that is what a consumer gets, so that is what must be checked.
"""

from __future__ import annotations

from pathlib import Path

from edgeft.core import formats
from edgeft.core.manifest import Artifact
from edgeft.runtimes.base import GREEDY, Messages, Runtime, Sampling, bos_before, sample

__all__ = ["GREEDY", "Messages", "Runtime", "Sampling", "bos_before", "load_runtime", "sample"]


def load_runtime(
    artifact: Artifact, stage_dir: Path, *, all_logits: bool = True, n_ctx: int | None = None
) -> Runtime:
    """The runtime a consumer would use for a manifest artifact entry.

    `all_logits=False` when only generating (edgeft run/chat): llama.cpp then skips computing
    and copying logits for every prompt position. `n_ctx`: llama.cpp's context size (None: the
    model's own, at most `llamacpp.MAX_CONTEXT`).
    """
    from edgeft.core.fileio import inside

    # Every path a manifest names stays inside its folder (fileio.inside).
    path = inside(stage_dir, artifact.path)
    if artifact.format == formats.GGUF:
        from edgeft.runtimes.llamacpp import LlamaCppRuntime

        return LlamaCppRuntime(path, n_ctx=n_ctx, all_logits=all_logits)
    if artifact.format == formats.GGUF_LORA:  # base GGUF + adapter GGUF, applied at load time
        from edgeft.runtimes.llamacpp import LlamaCppRuntime

        return LlamaCppRuntime(
            inside(path, artifact.get("base_file")),
            lora=inside(path, artifact.get("adapter_file")),
            n_ctx=n_ctx,
            all_logits=all_logits,
        )
    if artifact.format == formats.ONNX:
        from edgeft.runtimes.onnx import OnnxRuntime

        inside(path, artifact.get("model_file", "model.onnx"))
        return OnnxRuntime(path, artifact.get("model_file", "model.onnx"))
    if artifact.format == formats.ONNX_GENAI:
        from edgeft.runtimes.genai import GenAIRuntime

        return GenAIRuntime(path)
    if artifact.format == formats.HF_SAFETENSORS:
        from edgeft.runtimes.hf import HFRuntime

        return HFRuntime(path)
    raise ValueError(f"no runtime for artifact format {artifact.format!r}")
