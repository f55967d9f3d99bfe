"""onnxruntime-genai over an int4 folder (genai_config.json + model + tokenizer): what the ORT GenAI
APIs (Python, C#, Java, C) run. Its own tokenizer, chat template and EOS list are used."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from edgeft.runtimes.base import GREEDY, Messages, Runtime, Sampling


class GenAIRuntime(Runtime):
    name = "onnxruntime-genai"

    def __init__(self, folder: Path | str):
        import onnxruntime_genai as og

        self._og = og
        folder = Path(folder)
        self.model = og.Model(str(folder))
        self.tokenizer = og.Tokenizer(self.model)
        config = json.loads((folder / "genai_config.json").read_text())["model"]
        eos = config.get("eos_token_id")
        eos = eos if isinstance(eos, list) else [eos]
        # The builder writes generation_config's list in its order: the first is the EOS (Qwen:
        # <|im_end|>, then <|endoftext|>); every one of them stops.
        self._eos = eos[0] if eos else None
        self._stop = sorted(eos)
        self._bos = config.get("bos_token_id")
        self._context = int(config.get("context_length", 2048))
        self.context = self._context
        tc = folder / "tokenizer_config.json"
        tokenizer_config = json.loads(tc.read_text()) if tc.exists() else {}
        # ORT GenAI's encode never adds BOS; callers add it when the tokenizer is configured to.
        self._add_bos = tokenizer_config.get("add_bos_token", False)
        jinja = folder / "chat_template.jinja"
        self.template = jinja.read_text() if jinja.is_file() else tokenizer_config.get("chat_template")
        self.source = str(folder)
        # What a template consumer of this folder (transformers.js, LM Studio) passes as bos_token, eos_token, …
        self._template_tokens = {
            k: v["content"] if isinstance(v, dict) else v
            for k, v in tokenizer_config.items()
            if k.endswith("_token")
            and isinstance(v, (str, dict))
            and isinstance(v.get("content") if isinstance(v, dict) else v, str)
        }

    def template_tokens(self) -> dict[str, str]:
        return dict(self._template_tokens)

    def tokenize(self, text: str, add_special: bool = True) -> list[int]:
        ids = [int(i) for i in self.tokenizer.encode(text)]
        if add_special and self._add_bos and self._bos is not None:
            ids = [self._bos, *ids]
        return ids

    def render_chat(self, messages: Messages) -> str:
        return self.tokenizer.apply_chat_template(json.dumps(messages), add_generation_prompt=True)

    def _generator(self, ids: list[int], max_new_tokens: int, sampling: Sampling):
        params = self._og.GeneratorParams(self.model)
        greedy = sampling.temperature <= 0
        options: dict[str, Any] = {
            "max_length": min(self._context, len(ids) + max_new_tokens),
            "do_sample": not greedy,
        }
        if not greedy:
            options.update(
                temperature=sampling.temperature,
                top_p=sampling.top_p,
                top_k=sampling.top_k or 0,
                random_seed=sampling.seed,
            )
        params.set_search_options(**options)
        generator = self._og.Generator(self.model, params)
        generator.append_tokens(np.array(ids, dtype=np.int32))
        return generator

    def logits(self, ids: list[int]) -> np.ndarray:
        generator = self._generator(ids, 1, GREEDY)
        return np.array(generator.get_output("logits"), dtype=np.float32)[0][-len(ids) :]

    def stream(self, ids: list[int], max_new_tokens: int, sampling: Sampling = GREEDY) -> Iterator[int]:
        self.stopped = False
        generator = self._generator(ids, max_new_tokens, sampling)
        n = 0
        while not generator.is_done() and n < max_new_tokens:
            generator.generate_next_token()
            tok = int(generator.get_next_tokens()[0])
            if tok in self._stop:
                self.stopped = True
                return
            yield tok
            n += 1

    def detokenize(self, ids: list[int]) -> str:
        return self.tokenizer.decode(np.array(ids, dtype=np.int32))

    def special_tokens(self) -> dict[str, Any]:
        return {"bos": self._bos, "eos": self._eos, "stop": self._stop}
