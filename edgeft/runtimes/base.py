"""The `Runtime` interface every runtime implements, decoding settings (`Sampling`) and the
sampler the runtimes without one of their own use."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

Messages = list[dict[str, str]]


@dataclass(frozen=True)
class Sampling:
    """Decoding settings; temperature 0 is greedy (what verify uses)."""

    temperature: float = 0.0
    top_k: int = 0  # 0 = no top-k cut
    top_p: float = 1.0
    seed: int = 0


GREEDY = Sampling()


def sample(logits: np.ndarray, s: Sampling, rng: np.random.Generator) -> int:
    """One token from next-token logits under `s` (temperature, then top-k, then top-p)."""
    if s.temperature <= 0:
        return int(np.argmax(logits))
    x = logits.astype(np.float64) / s.temperature
    if s.top_k > 0:
        x[np.argsort(x)[: -s.top_k]] = -np.inf
    p = np.exp(x - x.max())
    p /= p.sum()
    if s.top_p < 1.0:
        order = np.argsort(-p)
        keep = np.cumsum(p[order]) - p[order] < s.top_p
        mask = np.zeros_like(p, dtype=bool)
        mask[order[keep]] = True
        p = np.where(mask, p, 0.0)
        p /= p.sum()
    return int(rng.choice(len(p), p=p))


class Runtime(ABC):
    name: str = "runtime"
    stopped: bool = False  # whether the last stream ended at a stop token
    template: str | None = None  # the artifact's own chat template, as its runtime reads it
    source: str = "the artifact"  # where it was loaded from, for messages
    context: int | None = None  # the most positions (prompt and new tokens) it takes, where known

    def prompt_ids(self, messages: Messages, max_new_tokens: int) -> list[int]:
        """The token ids of `messages`' chat prompt, refused (InputError) when the template renders
        nothing or when the prompt and `max_new_tokens` do not fit the context: the one rule of
        `edgeft run`, `chat`, eval and the server (a runtime past its context fails or, worse,
        answers from positions it was never trained on)."""
        ids = self.tokenize(self.chat_prompt(messages), add_special=False)
        if not ids:
            from edgeft.core.errors import InputError

            raise InputError(
                f"{self.source}: its chat template renders nothing for this conversation (an empty "
                f"prompt): the template is broken; fix the artifact's template"
            )
        self.check_fits(len(ids), max_new_tokens)
        return ids

    def check_fits(self, prompt_tokens: int, max_new_tokens: int) -> None:
        if self.context is not None and prompt_tokens + max_new_tokens > self.context:
            from edgeft.core.errors import InputError

            raise InputError(
                f"the prompt is {prompt_tokens:,} tokens and up to {max_new_tokens:,} new tokens were "
                f"asked for: {prompt_tokens + max_new_tokens:,} positions, more than the "
                f"{self.context:,}-token context of {self.source} in {self.name}: shorten the prompt "
                f"(in a chat, /reset) or ask for fewer new tokens"
            )

    @abstractmethod
    def tokenize(self, text: str, add_special: bool = True) -> list[int]:
        """Token ids; `add_special` adds BOS as the model's tokenizer config says."""

    def chat_prompt(self, messages: Messages) -> str:
        """The prompt for `messages` (with the generation prompt) from the artifact's template,
        rendered by its runtime once edgeft.models.template has rendered it within bounds."""
        from edgeft.models.template import guard

        guard(self.template, messages, source=self.source, special_tokens=self.template_tokens())
        return self.render_chat(messages)

    @abstractmethod
    def render_chat(self, messages: Messages) -> str:
        """The runtime's own rendering of `messages` with the generation prompt."""

    def template_tokens(self) -> dict[str, str]:
        """Special-token strings the template may use (bos_token, eos_token)."""
        return {}

    def special_type(self, token: int) -> tuple[str, str, str] | None:
        """(type, text, by whom) when the runtime types `token` so that its tokenizer takes the text
        out of user text whole ("control", "user-defined"); None otherwise or where unknown."""
        return None

    def bos_added(self) -> int | None:
        """The token `tokenize(add_special=True)` puts first (None: it adds none). A vocabulary may
        name a BOS that no runtime adds (Qwen's <|endoftext|> in its GGUF): only the added one counts."""
        return bos_before(self.tokenize("a", add_special=True), self.tokenize("a", add_special=False))

    @abstractmethod
    def logits(self, ids: list[int]) -> np.ndarray:
        """Next-token logits at every position of `ids`, shape [len(ids), vocab], float32."""

    def stream(self, ids: list[int], max_new_tokens: int, sampling: Sampling = GREEDY) -> Iterator[int]:
        """New tokens one at a time, the stop token excluded; sets `stopped`."""
        raise NotImplementedError(f"{self.name} does not stream")

    def generate(self, ids: list[int], max_new_tokens: int) -> tuple[list[int], bool]:
        """Greedy continuation of `ids`: (new tokens without the stop token, stopped at a stop token)."""
        out = list(self.stream(ids, max_new_tokens))
        return out, self.stopped

    def logits_many(self, sequences: list[list[int]]) -> list[np.ndarray]:
        """`logits` of several sequences (a runtime that can batch them overrides this)."""
        return [self.logits(ids) for ids in sequences]

    def generate_many(self, prompts: list[list[int]], max_new_tokens: int) -> list[tuple[list[int], bool]]:
        """`generate` for several prompts (a runtime that can batch them overrides this)."""
        return [self.generate(ids, max_new_tokens) for ids in prompts]

    def detokenize(self, ids: list[int]) -> str:
        raise NotImplementedError(f"{self.name} does not detokenize")

    def piece(self, token: int) -> bytes | None:
        """The bytes one token adds to the text, where concatenating them is exact (else None)."""
        return None

    @abstractmethod
    def special_tokens(self) -> dict[str, Any]:
        """{"bos": id|None, "eos": id|None, "stop": sorted ids that end generation}."""

    def close(self) -> None:  # noqa: B027 - optional for runtimes holding no native resources
        pass

    def __enter__(self) -> Runtime:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def bos_before(with_special: list[int], without: list[int]) -> int | None:
    """The token a tokenizer put before the text when adding its special tokens (None: none). A
    tokenizer may append an EOS and add no BOS: only a token before the text counts."""
    return (
        with_special[0]
        if len(with_special) > len(without) and with_special[1 : len(without) + 1] == without
        else None
    )
