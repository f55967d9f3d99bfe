"""llama.cpp runtime through llama-cpp-python: what a GGUF consumer (C, JNA, Python) runs."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from edgeft.runtimes.base import GREEDY, Messages, Runtime, Sampling


@contextlib.contextmanager
def _no_weight_repacking() -> Iterator[None]:
    """Load with llama.cpp's extra CPU buffer types (weight repacking, AMX) turned off.

    On CPUs with AMX (Sapphire Rapids and later, as the machines edgeft is tested on) the AMX
    matmul path segfaults on q8_0/q4_k_m models with small dimensions (llama.cpp issue 20824,
    open). llama-cpp-python's `Llama` does not expose `use_extra_bufts`, so the default-params
    factory it calls is wrapped while the model loads. EDGEFT_LLAMA_REPACK=1 keeps repacking.
    """
    import llama_cpp.llama as high_level

    low = high_level.llama_cpp
    original = low.llama_model_default_params
    if os.environ.get("EDGEFT_LLAMA_REPACK") == "1":
        yield
        return

    def params():
        p = original()
        p.use_extra_bufts = False
        return p

    low.llama_model_default_params = params
    try:
        yield
    finally:
        low.llama_model_default_params = original


@contextlib.contextmanager
def llama_log_level(level: int = logging.CRITICAL) -> Iterator[None]:
    """llama.cpp's own log, which llama-cpp-python prints to sys.stderr, at `level` and above
    only (CRITICAL: nothing) while the block runs; for the low-level API, which `Llama`'s
    `verbose` does not cover."""
    import llama_cpp  # noqa: F401  (installs the log callback that honours this logger)

    logger = logging.getLogger("llama-cpp-python")
    old = logger.level
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.setLevel(old)


# The context `edgeft run`, `chat` and eval give a model that was trained on a longer one: its
# KV cache grows with it (8192 positions of a 7B model: 1 GB at f16).
MAX_CONTEXT = 8192


def check_before_loading(path: Path) -> int | None:
    """InputError for a GGUF whose header is out of bounds or whose chat template is not (see
    edgeft.models.template), before llama.cpp reads it; the context length it was trained on, if given."""
    from edgeft.models import gguf_header
    from edgeft.models.template import guard

    header = gguf_header.read(path)
    tokens = header.special_tokens()
    for key, template in header.metadata.items():
        if key == "tokenizer.chat_template" or key.startswith("tokenizer.chat_template."):
            guard(
                template if isinstance(template, str) else None,
                source=f"{path} ({key})",
                special_tokens=tokens,
            )
    trained = header.metadata.get(f"{header.metadata.get('general.architecture')}.context_length")
    return trained if isinstance(trained, int) and trained > 0 else None


def vocab_special_tokens(vocab: Any) -> dict[str, Any]:
    """BOS, EOS and every end-of-generation token of a llama.cpp vocabulary."""
    import llama_cpp

    bos, eos = llama_cpp.llama_vocab_bos(vocab), llama_cpp.llama_vocab_eos(vocab)
    n = llama_cpp.llama_vocab_n_tokens(vocab)
    stop = [t for t in range(n) if llama_cpp.llama_vocab_is_eog(vocab, t)]
    return {"bos": bos if bos != -1 else None, "eos": eos if eos != -1 else None, "stop": stop}


def gguf_formatter(template: str | None, tokens: dict[str, str]) -> Any:
    """llama-cpp-python's formatter for a GGUF's chat template: what its chat API renders, and
    what `edgeft run`, verify and `edgeft serve` render with."""
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    if not template:
        raise LookupError("the GGUF has no tokenizer.chat_template")
    return Jinja2ChatFormatter(template=template, **tokens)


class LlamaCppPrompter(Runtime):
    """The prompt side of `LlamaCppRuntime` without the weights (llama.cpp's tokenizer from the
    file's vocabulary, the file's chat template, the same rendering and context rule): what
    `edgeft serve` turns a conversation into token ids with before llama-server generates.
    Thread-safe."""

    name = "llama.cpp"

    def __init__(self, path: Path | str, n_ctx: int | None = None):
        import threading

        from edgeft.models import gguf_header
        from edgeft.models.vocab import VocabOnly

        trained = check_before_loading(Path(path))
        self.context = n_ctx or min(trained or MAX_CONTEXT, MAX_CONTEXT)
        template = gguf_header.read(Path(path)).metadata.get("tokenizer.chat_template")
        self.template = template if isinstance(template, str) else None
        self.source = str(path)
        self._vocab = VocabOnly(Path(path))
        if self._vocab.model is None:
            from edgeft.core.errors import InputError

            raise InputError(f"{path}: llama.cpp refuses its vocabulary ({self._vocab.refusal})")
        self._lock = threading.Lock()
        self._formatter = gguf_formatter(self.template, self.template_tokens()) if self.template else None

    def _text(self, token: int) -> str:
        import llama_cpp

        if token == -1:
            return ""
        return llama_cpp.llama_vocab_get_text(self._vocab.vocab, token).decode("utf-8", errors="replace")

    def template_tokens(self) -> dict[str, str]:
        import llama_cpp

        vocab = self._vocab.vocab
        return {
            "eos_token": self._text(llama_cpp.llama_vocab_eos(vocab)),
            "bos_token": self._text(llama_cpp.llama_vocab_bos(vocab)),
        }

    def tokenize(self, text: str, add_special: bool = True) -> list[int]:
        with self._lock:
            return self._vocab.tokenize(text, add_special=add_special, parse_special=True)

    def render_chat(self, messages: Messages) -> str:
        if self._formatter is None:
            raise LookupError("the GGUF has no tokenizer.chat_template")
        return self._formatter(messages=messages).prompt

    def logits(self, ids: list[int]) -> np.ndarray:
        raise NotImplementedError("the prompter has no weights")

    def special_tokens(self) -> dict[str, Any]:
        return vocab_special_tokens(self._vocab.vocab)

    def close(self) -> None:
        self._vocab.close()


class LlamaCppRuntime(Runtime):
    name = "llama.cpp"

    def __init__(
        self,
        path: Path | str,
        n_ctx: int | None = 1024,
        lora: Path | str | None = None,
        all_logits: bool = True,
    ):
        """`all_logits=False` for generation only: `logits()` then fails, generation is faster.

        The file's header is read within bounds and its chat templates rendered by edgeft's guard
        first: llama-cpp-python compiles them while loading, unbounded (edgeft/models/gguf_header.py)."""
        import llama_cpp

        trained = check_before_loading(Path(path))
        if n_ctx is None:  # the model's own
            n_ctx = min(trained or MAX_CONTEXT, MAX_CONTEXT)
        self._lib = llama_cpp
        with _no_weight_repacking():
            self.llm = llama_cpp.Llama(
                model_path=str(path),
                n_ctx=n_ctx,
                logits_all=all_logits,
                verbose=False,
                n_threads=os.cpu_count() or 1,
                seed=0,
                lora_path=str(lora) if lora else None,
            )
        self._vocab = llama_cpp.llama_model_get_vocab(self.llm.model)
        meta = self.llm.metadata
        self.template = meta.get("tokenizer.chat_template")
        self.source = str(path)
        self.context = self.llm.n_ctx()
        self._formatter: Any = None

    def tokenize(self, text: str, add_special: bool = True) -> list[int]:
        # special=True: special-token text is parsed as the token, as HF tokenizers do.
        return list(self.llm.tokenize(text.encode("utf-8"), add_bos=add_special, special=True))

    def render_chat(self, messages: Messages) -> str:
        """Render with the template stored in the GGUF, the way llama-cpp-python's chat API does."""
        if self._formatter is None:  # compiling the template costs more than a tiny model's reply
            self._formatter = gguf_formatter(self.template, self.template_tokens())
        return self._formatter(messages=messages).prompt

    def template_tokens(self) -> dict[str, str]:
        model = self.llm._model
        eos, bos = self.llm.token_eos(), self.llm.token_bos()
        return {
            "eos_token": model.token_get_text(eos) if eos != -1 else "",
            "bos_token": model.token_get_text(bos) if bos != -1 else "",
        }

    def logits(self, ids: list[int]) -> np.ndarray:
        self.llm.reset()
        self.llm.eval(ids)
        return np.array(self.llm.scores[: len(ids)], dtype=np.float32)

    def special_type(self, token: int) -> tuple[str, str, str] | None:
        lib = self._lib
        attr = lib.llama_vocab_get_attr(self._vocab, token)
        kind = (
            "control"
            if attr & lib.LLAMA_TOKEN_ATTR_CONTROL
            else "user-defined"
            if attr & lib.LLAMA_TOKEN_ATTR_USER_DEFINED
            else None
        )
        if kind is None:
            return None
        text = self.llm.detokenize([token], special=True).decode("utf-8", "replace")
        by = "in the artifact's vocabulary (the GGUF's tokenizer.ggml.token_type)"
        if attr & lib.LLAMA_TOKEN_ATTR_NORMAL:  # the file says normal: llama.cpp's own rule added control
            by = (
                "by llama.cpp itself when it loads the file (the GGUF stores it as normal; llama.cpp types texts "
                "that look like end-of-generation markers control"
                + (" and stops generating there" if lib.llama_vocab_is_eog(self._vocab, token) else "")
                + ")"
            )
        return kind, text, by

    def bos_added(self) -> int | None:
        """The BOS token llama.cpp puts first when tokenizing with special tokens (None: it adds none)."""
        return self.llm.token_bos() if self._lib.llama_vocab_get_add_bos(self._vocab) else None

    def is_stop(self, token: int) -> bool:
        return bool(self._lib.llama_vocab_is_eog(self._vocab, token))

    def stream(self, ids: list[int], max_new_tokens: int, sampling: Sampling = GREEDY) -> Iterator[int]:
        self.stopped = False
        # No reset: llama-cpp-python reuses the KV cache of a shared prompt prefix (a chat's
        # earlier turns), which is exact and what its own callers get.
        self.llm.set_seed(sampling.seed)
        greedy = sampling.temperature <= 0
        n = 0
        for tok in self.llm.generate(
            ids,
            temp=0.0 if greedy else sampling.temperature,
            top_k=1 if greedy else sampling.top_k,
            top_p=sampling.top_p,
            min_p=0.0,
            repeat_penalty=1.0,
            reset=True,
        ):
            if self.is_stop(tok):
                self.stopped = True
                return
            yield tok
            n += 1
            if n >= max_new_tokens or len(ids) + n >= self.llm.n_ctx():
                return

    def detokenize(self, ids: list[int]) -> str:
        return self.llm.detokenize(ids).decode("utf-8", errors="replace")

    def piece(self, token: int) -> bytes | None:
        return self.llm.detokenize([token])

    def special_tokens(self) -> dict[str, Any]:
        return vocab_special_tokens(self._vocab)

    def close(self) -> None:
        # Closed explicitly: left to the interpreter's exit, llama.cpp's teardown errors out.
        if getattr(self, "llm", None) is not None:
            self.llm.close()
            self.llm = None
