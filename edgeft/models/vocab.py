"""llama.cpp's tokenizer alone, read from a GGUF's vocabulary: what the pre-tokenizer match, the
pre-flight, the any-GGUF tokenizer proof and the importance matrix's token count ask of a file."""

from __future__ import annotations

import threading
from pathlib import Path

# llama.cpp's log callback is one per process: loads that swap it in and out must not overlap
# (a callback freed while another thread's load still calls it crashes the process).
_LOADING = threading.Lock()


class VocabOnly:
    """llama.cpp's tokenizer alone, from a GGUF's vocabulary (no weights read, no context made;
    seconds even for a large model). `pre` overrides the file's tokenizer.ggml.pre. Where libllama
    refuses the file, `model` is None and `refusal` holds the first thing it said (its log is
    collected while loading, never printed)."""

    def __init__(self, path: Path, pre: str | None = None):
        import ctypes

        import llama_cpp
        from llama_cpp import _logger

        self._lib = llama_cpp
        said: list[str] = []

        @llama_cpp.llama_log_callback
        def collect(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
            if level in (2, 3):  # warnings and errors
                said.append(text.decode("utf-8", "replace"))

        params = llama_cpp.llama_model_default_params()
        params.vocab_only = True
        if pre is not None:
            self._overrides = (
                llama_cpp.llama_model_kv_override * 2
            )()  # the last one, all zero, ends the list
            self._overrides[0].key = b"tokenizer.ggml.pre"
            self._overrides[0].tag = llama_cpp.LLAMA_KV_OVERRIDE_TYPE_STR
            self._overrides[0].value.val_str = pre.encode()
            params.kv_overrides = self._overrides
        with _LOADING:
            llama_cpp.llama_log_set(collect, ctypes.c_void_p(0))
            try:
                self.model = llama_cpp.llama_model_load_from_file(str(path).encode(), params)
            finally:
                llama_cpp.llama_log_set(_logger.llama_log_callback, ctypes.c_void_p(0))
        self.vocab = llama_cpp.llama_model_get_vocab(self.model) if self.model else None
        why = [line.strip() for line in "".join(said).splitlines() if line.strip()]
        self.refusal = None if self.model else (why[0] if why else "it gives no reason")

    def __enter__(self) -> VocabOnly:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def n_tokens(self) -> int:
        return int(self._lib.llama_vocab_n_tokens(self.vocab))

    def tokenize(self, text: str, add_special: bool = False, parse_special: bool = False) -> list[int]:
        """Token ids as llama.cpp's own tokenizer gives them (`add_special`: the BOS/EOS the file
        says to add; `parse_special`: special-token text in `text` becomes those tokens)."""
        data = text.encode("utf-8")
        size = len(data) + 8
        buf = (self._lib.llama_token * size)()
        n = self._lib.llama_tokenize(self.vocab, data, len(data), buf, size, add_special, parse_special)
        if n < 0:
            size = -n
            buf = (self._lib.llama_token * size)()
            n = self._lib.llama_tokenize(self.vocab, data, len(data), buf, size, add_special, parse_special)
        return list(buf[:n])

    def close(self) -> None:
        if self.model:
            self._lib.llama_model_free(self.model)
            self.model = None
