"""ONNX Runtime (CPU provider) over an optimum export with KV cache: what ORT Java runs.

Driven through the plain `InferenceSession` API with the graph's own input/output names, as a
Java consumer does, rather than through optimum's Python wrapper.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from edgeft.runtimes.base import GREEDY, Sampling, sample
from edgeft.runtimes.hf import HFTokenizerRuntime, stop_ids_from


class OnnxRuntime(HFTokenizerRuntime):
    name = "onnxruntime"

    def __init__(self, folder: Path | str, model_file: str = "model.onnx"):
        import onnxruntime as ort
        from transformers import AutoTokenizer, GenerationConfig

        folder = Path(folder)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = os.cpu_count() or 1
        self.session = ort.InferenceSession(
            str(folder / model_file), opts, providers=["CPUExecutionProvider"]
        )
        self._use_tokenizer(AutoTokenizer.from_pretrained(folder), folder)
        gen = (
            GenerationConfig.from_pretrained(folder) if (folder / "generation_config.json").exists() else None
        )
        self._stop = stop_ids_from(gen, self.tokenizer)
        self._inputs = {i.name: i for i in self.session.get_inputs()}
        self._past = sorted(n for n in self._inputs if n.startswith("past_key_values."))
        config = json.loads((folder / "config.json").read_text())
        heads = config.get("num_key_value_heads") or config["num_attention_heads"]
        head_dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
        self._kv_shape = (1, heads, 0, head_dim)
        self.context = config.get("max_position_embeddings")
        self._float = np.float16 if "float16" in self._inputs[self._past[0]].type else np.float32

    def _run(self, ids: list[int], past: dict[str, np.ndarray], past_len: int) -> tuple[np.ndarray, dict]:
        n = len(ids)
        feed: dict[str, np.ndarray] = {
            "input_ids": np.array([ids], dtype=np.int64),
            "attention_mask": np.ones((1, past_len + n), dtype=np.int64),
        }
        if "position_ids" in self._inputs:
            feed["position_ids"] = np.arange(past_len, past_len + n, dtype=np.int64)[None, :]
        feed.update(past)
        names = [o.name for o in self.session.get_outputs()]
        outs = dict(zip(names, self.session.run(names, feed), strict=True))
        present = {
            name.replace("present.", "past_key_values."): value
            for name, value in outs.items()
            if name.startswith("present.")
        }
        return outs["logits"][0].astype(np.float32), present

    def _empty_past(self) -> dict[str, np.ndarray]:
        return {n: np.zeros(self._kv_shape, dtype=self._float) for n in self._past}

    def logits(self, ids: list[int]) -> np.ndarray:
        logits, _ = self._run(ids, self._empty_past(), 0)
        return logits

    def stream(self, ids: list[int], max_new_tokens: int, sampling: Sampling = GREEDY) -> Iterator[int]:
        self.stopped = False
        rng = np.random.default_rng(sampling.seed)
        logits, past = self._run(ids, self._empty_past(), 0)
        pos = len(ids)
        for _ in range(max_new_tokens):
            tok = sample(logits[-1], sampling, rng)
            if tok in self._stop:
                self.stopped = True
                return
            yield tok
            logits, past = self._run([tok], past, pos)
            pos += 1

    def special_tokens(self) -> dict[str, Any]:
        return {"bos": self.tokenizer.bos_token_id, "eos": self.tokenizer.eos_token_id, "stop": self._stop}
