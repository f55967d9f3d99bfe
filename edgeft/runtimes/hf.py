"""HF transformers runtime (fp32 on CPU): the reference the parity gate compares against."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgeft.runtimes.base import Messages, Runtime


def stop_ids_from(generation_config: Any, tokenizer: Any) -> list[int]:
    eos = getattr(generation_config, "eos_token_id", None)
    if eos is None:
        eos = tokenizer.eos_token_id
    ids = list(eos) if isinstance(eos, (list, tuple)) else [eos]
    return sorted({int(i) for i in ids if i is not None})


def default_template(tokenizer: Any) -> str | None:
    """The template apply_chat_template uses without a name (a tokenizer may carry several)."""
    t = tokenizer.chat_template
    return t.get("default") if isinstance(t, dict) else t


# Logits one batch may hold (float32: 1 GiB): 4,096 positions of a 49k vocabulary, 1,024 of Gemma's 262k.
LOGIT_FLOATS = 1 << 28


def _batches(sequences: list[list[int]], max_tokens: int = 4096, max_rows: int = 16) -> list[list[int]]:
    """Indices of `sequences` grouped by length: at most `max_rows` per batch and about
    `max_tokens` of padded width × rows, so a long probe does not pad many short ones."""
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
    batches: list[list[int]] = []
    for i in order:
        if batches:
            last = batches[-1]
            if len(last) < max_rows and len(sequences[i]) * (len(last) + 1) <= max_tokens:
                last.append(i)
                continue
        batches.append([i])
    return batches


class HFTokenizerRuntime(Runtime):
    """What a runtime with an HF tokenizer beside its model does alike (transformers, ONNX Runtime):
    tokenise, render the template, decode. Subclasses set `tokenizer` through `_use_tokenizer`."""

    tokenizer: Any

    def _use_tokenizer(self, tokenizer: Any, source: Path | str) -> None:
        self.tokenizer, self.template, self.source = tokenizer, default_template(tokenizer), str(source)

    def tokenize(self, text: str, add_special: bool = True) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=add_special)["input_ids"])

    def render_chat(self, messages: Messages) -> str:
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def template_tokens(self) -> dict[str, str]:
        from edgeft.models.base import special_tokens

        return special_tokens(self.tokenizer)

    def detokenize(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)


class HFRuntime(HFTokenizerRuntime):
    name = "transformers"

    def __init__(
        self,
        model_dir: Path | str,
        dtype: str = "float32",
        trust_remote_code: bool = False,
        chat_template: str | None = None,
        extra_stop: list[int] | tuple[int, ...] = (),
    ):
        """`chat_template` replaces the tokenizer's; `extra_stop` ids end generation as well."""
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=trust_remote_code)
        if chat_template is not None:
            tokenizer.chat_template = chat_template
        self._use_tokenizer(tokenizer, model_dir)
        self.model = AutoModelForCausalLM.from_pretrained(
            model_dir, dtype=getattr(torch, dtype), trust_remote_code=trust_remote_code, use_safetensors=True
        ).eval()
        self._stop = sorted(
            set(stop_ids_from(self.model.generation_config, self.tokenizer)) | set(extra_stop)
        )
        self.context = getattr(self.model.config, "max_position_embeddings", None)
        self.stopped_on: list[int | None] = []

    def logits(self, ids: list[int]) -> np.ndarray:
        import torch

        with torch.no_grad():
            out = self.model(torch.tensor([ids]))
        return out.logits[0].float().numpy()

    def generate(self, ids: list[int], max_new_tokens: int) -> tuple[list[int], bool]:
        return self.generate_many([ids], max_new_tokens)[0]

    def logits_many(self, sequences: list[list[int]]) -> list[np.ndarray]:
        """One forward pass per batch of similar lengths (right-padded, masked)."""
        import torch

        out: list[np.ndarray | None] = [None] * len(sequences)
        vocab = int(getattr(self.model.config, "vocab_size", 0) or 1 << 16)
        for batch in _batches(sequences, max_tokens=max(1, min(4096, LOGIT_FLOATS // vocab))):
            width = max(len(sequences[i]) for i in batch)
            ids = torch.zeros(len(batch), width, dtype=torch.long)
            mask = torch.zeros(len(batch), width, dtype=torch.long)
            for row, i in enumerate(batch):
                ids[row, : len(sequences[i])] = torch.tensor(sequences[i])
                mask[row, : len(sequences[i])] = 1
            with torch.no_grad():
                logits = self.model(ids, attention_mask=mask).logits.float().numpy()
            for row, i in enumerate(batch):
                out[i] = logits[row, : len(sequences[i])].copy()  # not a view holding the padded batch
            del logits
        return out  # type: ignore[return-value]

    def generate_many(
        self, prompts: list[list[int]], max_new_tokens: int, temperature: float = 0.0
    ) -> list[tuple[list[int], bool]]:
        """Greedy replies, a batch of similar lengths at a time (left-padded, masked): the same
        tokens as one at a time, up to float summation order. `temperature` > 0 samples instead
        (plain temperature sampling, no top-k/top-p; seed torch's generator first)."""
        import torch

        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self._stop[0]
        out: list[tuple[list[int], bool] | None] = [None] * len(prompts)
        self.stopped_on = [None] * len(prompts)  # the stop token each reply ended with (verify records them)
        for batch in _batches(prompts):
            width = max(len(prompts[i]) for i in batch)
            ids = torch.full((len(batch), width), pad, dtype=torch.long)
            mask = torch.zeros(len(batch), width, dtype=torch.long)
            for row, i in enumerate(batch):
                ids[row, width - len(prompts[i]) :] = torch.tensor(prompts[i])
                mask[row, width - len(prompts[i]) :] = 1
            with torch.no_grad():
                sampling = (
                    {"do_sample": True, "temperature": temperature, "top_k": 0, "top_p": 1.0}
                    if temperature > 0
                    else {"do_sample": False}
                )
                gen = self.model.generate(
                    ids,
                    attention_mask=mask,
                    max_new_tokens=max_new_tokens,
                    **sampling,
                    eos_token_id=self._stop,
                    pad_token_id=pad,
                )
            for row, i in enumerate(batch):
                new = gen[row, width:].tolist()
                stop = next((k for k, t in enumerate(new) if t in self._stop), None)
                out[i] = (new[:stop], True) if stop is not None else (new, False)
                self.stopped_on[i] = new[stop] if stop is not None else None
        return out  # type: ignore[return-value]

    def special_tokens(self) -> dict[str, Any]:
        added = {int(i): t.content for i, t in self.tokenizer.added_tokens_decoder.items() if t.special}
        return {
            "bos": self.tokenizer.bos_token_id,
            "eos": self.tokenizer.eos_token_id,
            "stop": self._stop,
            "added": added,
        }
