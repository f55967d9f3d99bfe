"""Offline inference on an exported artifact: what `edgeft run` and `edgeft chat` do.

Consumes a GGUF file, an ONNX folder (model.onnx + tokenizer), or a `dist/` folder (its first
GGUF unless `--type` picks another artifact); produces text, rendered with the artifact's own
chat template and stopped at its end-of-turn token. Nothing touches the network.

    edgeft run dist/nl2sql-tiny "How many employees work in Oslo?"
    edgeft chat dist/nl2sql-tiny/gguf/nl2sql-tiny-q4_k_m.gguf
"""

from __future__ import annotations

import codecs
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeft.core import formats
from edgeft.core.errors import InputError, first_line
from edgeft.core.fileio import inside
from edgeft.core.manifest import Artifact
from edgeft.runtimes import Messages, Runtime, Sampling


def resolve_artifact(path: Path, artifact_type: str | None = None) -> tuple[Artifact, Path]:
    """The artifact entry for a file, an ONNX folder or a dist folder, and the folder its path is in."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such artifact (a .gguf file, an ONNX folder or a dist folder)")
    if path.is_file():
        if path.suffix != ".gguf":
            raise InputError(f"{path}: not a .gguf file; pass a GGUF file, an ONNX folder or a dist folder")
        return Artifact(path.stem, path.name, formats.GGUF, info={"type": artifact_type}), path.parent
    if (path / "genai_config.json").is_file():
        return Artifact(path.name, path.name, formats.ONNX_GENAI, info={"type": artifact_type}), path.parent
    if (path / "model.onnx").is_file():
        return (
            Artifact(
                path.name, path.name, formats.ONNX, info={"type": artifact_type, "model_file": "model.onnx"}
            ),
            path.parent,
        )
    manifest = path / "manifest.json"
    if not manifest.is_file():
        raise InputError(
            f"{path}: neither model.onnx nor manifest.json here; pass a .gguf file, an ONNX "
            f"folder or a dist folder"
        )
    try:
        artifacts = Artifact.list_from_json(json.loads(manifest.read_text(encoding="utf-8")))
    except (ValueError, RecursionError):
        raise InputError(
            f"{manifest}: not a dist manifest (JSON with a list of artifacts); check the folder "
            f"with `edgeft verify {path} --check`"
        ) from None
    wanted = [a for a in artifacts if artifact_type in (None, a.type, a.name)]
    if not wanted:
        known = ", ".join(a.name for a in artifacts)
        raise InputError(f"{path}: no artifact of type {artifact_type!r} (has {known})")
    gguf = [a for a in wanted if a.format == formats.GGUF]
    chosen = (gguf or wanted)[0]
    return chosen, path


def open_runtime(path: Path, artifact_type: str | None = None) -> Runtime:
    """The artifact loaded in its runtime; a file its runtime cannot read is an input error
    naming the cause (a GGUF's header is read within bounds first, and names what is wrong
    where llama.cpp only refuses: edgeft.models.gguf_header)."""
    from edgeft.runtimes import load_runtime

    entry, root = resolve_artifact(path, artifact_type)
    where = inside(root, entry.path)
    try:
        return load_runtime(entry, root, all_logits=False)
    except InputError:
        raise
    except Exception as e:  # each runtime raises its own kinds for a file it cannot read
        raise InputError(
            f"{where}: cannot be loaded ({first_line(e)}); is it truncated or corrupt? A dist's files "
            f"can be checked with `edgeft verify DIST --check`"
        ) from None


@dataclass
class Reply:
    text: str
    prompt_tokens: int
    completion_tokens: int
    seconds: float
    stopped: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            "text": self.text,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "tokens_per_s": round(self.completion_tokens / self.seconds, 2) if self.seconds else None,
            "stopped_at_end_of_turn": self.stopped,
        }


def read_tools(path: Path) -> dict[str, dict[str, Any]]:
    """`--tools`: an OpenAI `tools` JSON array, or JSONL of function definitions (a dist's
    java/tools.jsonl), checked; the tools by name (edgeft.data.tools)."""
    from edgeft.data import tools

    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: cannot read the tools file ({e})") from None
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        value = []  # JSONL: one function definition per line
        for n, line in enumerate(text.splitlines(), start=1):
            try:
                value += [{"type": "function", "function": json.loads(line)}] if line.strip() else []
            except json.JSONDecodeError:
                raise InputError(
                    f"{path}:{n}: not JSON; --tools takes an OpenAI tools array or a dist's java/tools.jsonl"
                ) from None
    if isinstance(value, dict):  # JSONL of one line
        value = [{"type": "function", "function": value}]
    try:
        return tools.specs(value)
    except tools.BadTools as e:
        raise InputError(f"{path}: {e}") from None


def respond(
    rt: Runtime,
    messages: Messages,
    max_tokens: int,
    sampling: Sampling,
    on_text: Callable[[str], None] | None = None,
) -> Reply:
    """Generate the assistant's reply to `messages`, streaming text to `on_text`."""
    ids = rt.prompt_ids(messages, max_tokens)
    tokens: list[int] = []
    shown = ""
    # A multi-byte character can span tokens: decode incrementally and print only whole characters.
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    started = time.perf_counter()
    for tok in rt.stream(ids, max_tokens, sampling):
        tokens.append(tok)
        if not on_text:
            continue
        piece = rt.piece(tok)
        if piece is not None:  # llama.cpp: each token's bytes, as its own examples stream them
            chunk = decoder.decode(piece)
        else:  # tokenizers whose pieces do not concatenate (SentencePiece spaces): decode the whole
            text = rt.detokenize(tokens)
            chunk = text[len(shown) :] if not text.endswith("\ufffd") else ""
        if chunk:
            on_text(chunk)
            shown += chunk
    seconds = time.perf_counter() - started
    text = rt.detokenize(tokens)
    if on_text and len(text) > len(shown) and text.startswith(shown):
        on_text(text[len(shown) :])
    return Reply(text, len(ids), len(tokens), seconds, rt.stopped)
