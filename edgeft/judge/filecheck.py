"""Checks of a GGUF file against the reference model's own files, without running either.

The runtime checks in verify say *that* an artifact behaves differently; these say *why* when
the cause is in the file: a hyperparameter the converter got wrong (rope theta, context
length, head counts, norm epsilon), a weight tensor that is not the reference's, or weights
that lie on a 4-bit grid because the adapter was merged into a quantized base.

- `hyperparameters`: the GGUF's `<arch>.*` keys against the reference `config.json`.
- `weights` (lossless types f32/f16/bf16 only): every tensor against the reference safetensors,
  element by element (after undoing what the converter does to them, as transformers' GGUF loader
  does: llama's q/k row permutation, Gemma's norms stored with +1), within
  the rounding of the type; and the 4-bit-grid test (at most 16 distinct values in most blocks
  of 64), which names a merge into a quantized base.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

# GGUF key suffix (after "<arch>.") → the HF config keys that mean the same thing.
HYPERPARAMETERS = {
    "context_length": ("max_position_embeddings",),
    "embedding_length": ("hidden_size",),
    "block_count": ("num_hidden_layers",),
    "feed_forward_length": ("intermediate_size",),
    "attention.head_count": ("num_attention_heads",),
    "attention.head_count_kv": ("num_key_value_heads",),
    "attention.layer_norm_rms_epsilon": ("rms_norm_eps",),
    "rope.freq_base": ("rope_theta",),
    "vocab_size": ("vocab_size",),
}

# Relative error (‖gguf − reference‖ / ‖reference‖ per tensor) each lossless type can explain:
# the type's unit roundoff (2^-24, 2^-11, 2^-8) with a margin.
WEIGHT_TOLERANCE = {"f32": 1e-6, "f16": 1e-3, "bf16": 8e-3}


def _arch_key(meta: dict[str, Any], suffix: str) -> Any:
    arch = meta.get("general.architecture")
    return meta.get(f"{arch}.{suffix}")


def hyperparameters(meta: dict[str, Any], config: dict[str, Any]) -> list[str]:
    """One line per hyperparameter whose GGUF value differs from the reference config."""
    problems = []
    for suffix, names in HYPERPARAMETERS.items():
        got = _arch_key(meta, suffix)
        want = next((config[n] for n in names if config.get(n) is not None), None)
        if suffix == "vocab_size" and got is None:
            continue  # written only by some architectures; the token list has the length
        if got is None or want is None:
            continue
        if isinstance(want, float) or isinstance(got, float):
            same = abs(float(got) - float(want)) <= 1e-6 * max(abs(float(want)), 1e-12)
        else:
            same = int(got) == int(want)
        if not same:
            problems.append(
                f"{meta.get('general.architecture')}.{suffix} is {got}, the reference config's "
                f"{names[0]} is {want}"
            )
    return problems


def _reference_tensors(model_dir: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    out: dict[str, np.ndarray] = {}
    for f in sorted(Path(model_dir).glob("*.safetensors")):
        out.update(load_file(f))
    return out


def _on_4bit_grid(w: np.ndarray, block: int = 64, sample: int = 256) -> bool:
    """True when most blocks of `block` consecutive values hold at most 16 distinct values."""
    flat = w.reshape(-1)
    n = flat.size // block
    if n < 4:
        return False
    blocks = flat[: n * block].reshape(n, block)[:: max(1, n // sample)]
    distinct = np.array([np.unique(b).size for b in blocks])
    return bool((distinct <= 16).mean() > 0.9)


def check(path: Path, model_dir: Path, gguf_type: str) -> list[tuple[str, list[str], dict[str, Any]]]:
    """(check, problems, numbers) for `hyperparameters`, and `weights` for the lossless types; the
    file is parsed once."""
    from edgeft.models import gguf_meta

    reader = gguf_meta.open_reader(path)
    meta = gguf_meta.metadata(reader)
    config = json.loads((Path(model_dir) / "config.json").read_text())
    out: list[tuple[str, list[str], dict[str, Any]]] = [
        ("hyperparameters", hyperparameters(meta, config), {})
    ]
    if gguf_type in WEIGHT_TOLERANCE:
        out.append(("weights", *weights(reader, meta, config, model_dir, gguf_type)))
    return out


def _from_gguf(arch: str, model_dir: Path) -> Any:
    """What the converter did to a tensor of `arch`, undone, as transformers' GGUF loader undoes it
    (its tensor processors: llama's q/k rows permuted for rope, Gemma's norms stored with +1)."""
    from transformers import AutoConfig
    from transformers.modeling_gguf_pytorch_utils import TENSOR_PROCESSORS, TensorProcessor

    processor = TENSOR_PROCESSORS.get(arch, TensorProcessor)(
        config=AutoConfig.from_pretrained(model_dir).to_dict()
    )

    def undo(weights: np.ndarray, name: str) -> np.ndarray:
        return np.asarray(processor.process(weights=weights, name=name).weights)

    return undo


def weights(
    reader: Any, meta: dict[str, Any], config: dict[str, Any], model_dir: Path, gguf_type: str
) -> tuple[list[str], dict[str, Any]]:
    """(problems, numbers) comparing a lossless GGUF's tensors with the reference safetensors."""
    import gguf

    arch = meta.get("general.architecture")
    ref = _reference_tensors(model_dir)
    n_blocks = int(config.get("num_hidden_layers", 0))
    try:
        names = gguf.get_tensor_name_map(gguf.MODEL_ARCH[str(arch).upper()], n_blocks)
    except (KeyError, AttributeError):
        return [], {"weights_compared": 0, "note": f"no tensor name map for architecture {arch!r}"}
    by_gguf = {}
    for hf_name in ref:
        mapped = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if mapped:
            by_gguf[mapped] = hf_name
    tolerance = WEIGHT_TOLERANCE[gguf_type]
    undo = _from_gguf(str(arch), model_dir)
    differ, grid, compared, worst = [], [], 0, 0.0
    for t in reader.tensors:
        found = by_gguf.get(t.name)
        if found is None:
            continue
        got = np.asarray(t.data)
        if t.tensor_type == gguf.GGMLQuantizationType.BF16:
            got = (got.view(np.uint16).astype(np.uint32) << 16).view(np.float32)
        got = undo(got.astype(np.float32).reshape(ref[found].shape), t.name)
        want = ref[found].astype(np.float32)
        rel = float(np.linalg.norm(got - want) / max(float(np.linalg.norm(want)), 1e-30))
        compared += 1
        worst = max(worst, rel)
        if rel > tolerance:
            differ.append((t.name, rel))
        if got.ndim == 2 and _on_4bit_grid(got) and not _on_4bit_grid(want):
            grid.append(t.name)
    problems = []
    if grid:
        problems.append(
            f"{len(grid)} weight tensors (e.g. {grid[0]}) lie on a 4-bit grid (at most 16 distinct "
            f"values per block of 64) that the reference weights do not: the adapter was merged into a "
            f"4-bit quantized base; merge into the full-precision base instead"
        )
    if differ:
        name, rel = max(differ, key=lambda d: d[1])
        problems.append(
            f"{len(differ)} of {compared} tensors differ from the reference beyond {gguf_type} rounding "
            f"(relative error limit {tolerance:g}); worst {name}: {rel:.3g}"
        )
    if compared == 0:
        problems.append("no tensor matches a reference tensor by name: not this model's weights")
    return problems, {"weights_compared": compared, "weights_max_rel_error": worst}
