"""A GGUF file's header read within bounds, before anything else reads it.

`edgeft run`, `chat`, verify and eval hand GGUF files to llama.cpp, and a file is input like any
other: it may be a model from anywhere. llama-cpp-python renders the file's chat template while
it loads (`{{ 'x' * 1000000000 }}` took 20 s and 4 GB before edgeft's template guard could run),
and gguf-py's reader, asked to explain a file llama.cpp refused, builds an object per array
element (one array of 5 million strings: 32 s and 3.2 GB). `read` walks the header itself —
metadata and tensor table — with a limit on every count and length, in a memory map, and
raises InputError naming the first thing out of bounds or out of the file.

The limits are far above any model's: vocabularies hold up to ~262k tokens, merge lists ~500k.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeft.core.errors import InputError, shown

MAGIC = b"GGUF"
MAX_KV = 65_536  # metadata entries
MAX_TENSORS = 1_000_000
MAX_NAME = 65_536  # bytes of a key or tensor name
MAX_STRING = 16 << 20  # bytes of one string value (a chat template is a few kB)
MAX_ARRAY = 1 << 22  # elements of one array (4,194,304)
MAX_DIMS = 8

# GGUF value types: struct format of the scalars; 8 = string, 9 = array.
_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY = 8, 9


@dataclass
class Header:
    """What `read` found: scalar and string metadata, arrays as (element type, count), the offsets of
    the token strings (to read a token's text by id), and the tensor table."""

    path: Path
    version: int
    metadata: dict[str, Any] = field(default_factory=dict)
    arrays: dict[str, tuple[int, int]] = field(default_factory=dict)
    tensors: list[tuple[str, tuple[int, ...], int, int]] = field(
        default_factory=list
    )  # name, shape, type, offset
    _tokens: list[int] = field(default_factory=list, repr=False)

    def token(self, token_id: Any) -> str | None:
        """The text of token `token_id` (tokenizer.ggml.tokens), None when there is no such token."""
        if not isinstance(token_id, int) or not 0 <= token_id < len(self._tokens):
            return None
        with self.path.open("rb") as f:
            f.seek(self._tokens[token_id])
            (n,) = struct.unpack("<Q", f.read(8))
            return f.read(min(n, MAX_NAME)).decode("utf-8", errors="replace")

    def special_tokens(self) -> dict[str, str]:
        """bos_token / eos_token texts, as a chat template uses them."""
        out = {}
        for name in ("bos", "eos"):
            text = self.token(self.metadata.get(f"tokenizer.ggml.{name}_token_id"))
            if text is not None:
                out[f"{name}_token"] = text
        return out


class _Out(Exception):
    pass


class _Walk:
    def __init__(self, buf: Any, path: Path):
        self.buf, self.pos, self.path = buf, 0, path

    def take(self, n: int) -> Any:
        if n < 0 or self.pos + n > len(self.buf):
            raise _Out
        start = self.pos
        self.pos += n
        return self.buf[start : self.pos]

    def unpack(self, fmt: str) -> Any:
        size = struct.calcsize("<" + fmt)
        return struct.unpack("<" + fmt, self.take(size))[0]

    def string(self, limit: int, what: str) -> bytes:
        n = self.unpack("Q")
        if n > limit:
            raise InputError(
                f"{self.path}: {what} is {n:,} bytes long (at most {limit:,}): not a model file edgeft loads"
            )
        return bytes(self.take(n))


def _value(w: _Walk, kind: int, key: str, header: Header) -> Any:
    if kind in _SCALARS:
        return w.unpack(_SCALARS[kind])
    if kind == _STRING:
        return w.string(MAX_STRING, f"metadata value {shown(key, 80)}").decode("utf-8", errors="replace")
    if kind != _ARRAY:
        raise InputError(
            f"{w.path}: metadata key {shown(key, 80)} has value type {kind}, which GGUF does not define: "
            f"not a valid GGUF file"
        )
    element, count = w.unpack("I"), w.unpack("Q")
    if count > MAX_ARRAY:
        raise InputError(
            f"{w.path}: metadata key {shown(key, 80)} is an array of {count:,} values, more than any model "
            f"holds (at most {MAX_ARRAY:,}): not a model file edgeft loads"
        )
    header.arrays[key] = (element, count)
    if element in _SCALARS:
        w.take(struct.calcsize("<" + _SCALARS[element]) * count)
    elif element == _STRING:  # the hot loop (vocabularies): unpack_from, no slices
        offsets = header._tokens if key == "tokenizer.ggml.tokens" else None
        buf, pos, end, longest = w.buf, w.pos, len(w.buf), 0
        for _ in range(count):
            if pos + 8 > end:
                raise _Out
            if offsets is not None:
                offsets.append(pos)
            n = struct.unpack_from("<Q", buf, pos)[0]
            longest = max(longest, n)
            pos += 8 + n
        if pos > end:
            raise _Out
        if longest > MAX_STRING:
            raise InputError(
                f"{w.path}: an element of metadata key {shown(key, 80)} is {longest:,} bytes long: not "
                f"a model file edgeft loads"
            )
        w.pos = pos
    else:
        raise InputError(
            f"{w.path}: metadata key {shown(key, 80)} is an array of arrays or of type {element}: "
            f"not a model file edgeft loads"
        )
    return None


def read(path: Path | str) -> Header:
    """The header of the GGUF file at `path`, checked (see the module docstring)."""
    path = Path(path)
    try:
        with path.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            return _read(_Walk(buf, path))
    except ValueError:  # mmap of an empty file
        raise InputError(f"{path}: empty, not a GGUF file") from None
    except _Out:
        raise InputError(f"{path}: ends inside its header: truncated, or not a GGUF file") from None


def _read(w: _Walk) -> Header:
    if bytes(w.take(4)) != MAGIC:
        raise InputError(f"{w.path}: does not start with GGUF's magic bytes: not a GGUF file")
    version = w.unpack("I")
    if version not in (2, 3):
        raise InputError(
            f"{w.path}: GGUF version {version} (edgeft reads versions 2 and 3; a big-endian file "
            f"reads as a huge version)"
        )
    header = Header(w.path, version)
    n_tensors, n_kv = w.unpack("Q"), w.unpack("Q")
    if n_kv > MAX_KV or n_tensors > MAX_TENSORS:
        raise InputError(
            f"{w.path}: says it holds {n_kv:,} metadata entries and {n_tensors:,} tensors (at most "
            f"{MAX_KV:,} and {MAX_TENSORS:,}): not a model file edgeft loads"
        )
    for _ in range(n_kv):
        key = w.string(MAX_NAME, "a metadata key").decode("utf-8", errors="replace")
        value = _value(w, w.unpack("I"), key, header)
        if value is not None:
            header.metadata[key] = value
    for _ in range(n_tensors):
        name = w.string(MAX_NAME, "a tensor name").decode("utf-8", errors="replace")
        dims = w.unpack("I")
        if dims > MAX_DIMS:
            raise InputError(
                f"{w.path}: tensor {shown(name, 80)} has {dims} dimensions: not a valid GGUF file"
            )
        shape = tuple(w.unpack("Q") for _ in range(dims))
        header.tensors.append((name, shape, w.unpack("I"), w.unpack("Q")))
    _check_data(w, header)
    return header


def _check_data(w: _Walk, header: Header) -> None:
    """Every tensor's bytes lie inside the file (a truncated download ends inside its data)."""
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    alignment = header.metadata.get("general.alignment", 32)
    if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
        raise InputError(
            f"{w.path}: general.alignment is {shown(alignment)}, not a power of two: not a valid GGUF file"
        )
    data = -(-w.pos // alignment) * alignment
    for name, shape, kind, offset in header.tensors:
        try:
            block, size = GGML_QUANT_SIZES[GGMLQuantizationType(kind)]
        except (ValueError, KeyError):
            raise InputError(
                f"{w.path}: tensor {shown(name, 80)} has type {kind}, which this llama.cpp does not know"
            ) from None
        elements = 1
        for d in shape:
            elements *= d
        end = data + offset + elements // block * size
        if end > len(w.buf):
            raise InputError(
                f"{w.path}: tensor {shown(name, 80)} ends at byte {end:,}, past the end of the file "
                f"({len(w.buf):,} bytes): truncated (an interrupted download or copy?)"
            )
