"""The artifact types edgeft exports: what each is called in the config, what produces it, and
the band verify holds it to. The table is data, `formats.toml` beside this module (each band
with what was measured and why); adding a type is one entry there.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, replace
from importlib import resources
from typing import Any

# An artifact entry's `format` (core.manifest.Artifact): what a consumer loads it with.
GGUF, GGUF_LORA = "gguf", "gguf-lora"  # llama.cpp: one file; a base GGUF with an adapter GGUF
ONNX, ONNX_GENAI = "onnx", "onnx-genai"  # ONNX Runtime: a folder; ONNX Runtime GenAI: a folder
HF_SAFETENSORS, PEFT_LORA = "hf-safetensors", "peft-lora"  # transformers: a model; a PEFT adapter
JSONL, JSON, MARKDOWN, PNG = "jsonl", "json", "markdown", "png"  # data splits, reports, plots


@dataclass(frozen=True)
class Band:
    """What an artifact type may differ by from the fp32 reference, and why."""

    kl_mean: float  # mean KL(reference || artifact) over all positions, nats
    kl_p99: float  # 99th percentile over positions (a maximum grows with the number of positions)
    top1: float  # minimum fraction of positions where the argmax agrees
    gen_prefix: float  # minimum mean fraction of the reference generation reproduced exactly
    why: str
    # Mean KL and top-1 allowed over the edge cases, whose near-context probe (~1000 positions)
    # weighs most: where activations are in reduced precision the error grows with position.
    # None: kl_mean and top1.
    edge_kl_mean: float | None = None
    edge_top1: float | None = None

    @property
    def edge_limit(self) -> float:
        return self.kl_mean if self.edge_kl_mean is None else self.edge_kl_mean

    @property
    def edge_top1_limit(self) -> float:
        return self.top1 if self.edge_top1 is None else self.edge_top1


@dataclass(frozen=True)
class GGUFType:
    ftype: str  # llama.cpp's llama_ftype constant (llama_model_quantize)
    band: Band
    # "uses": the quantizer weighs errors with an importance matrix when given one; "needs": it
    # refuses to quantize without one; None: the type ignores it.
    imatrix: str | None = None

    @property
    def quantize_name(self) -> str:
        """The type's name on llama-quantize's command line (Q4_K_M)."""
        return self.ftype.removeprefix("LLAMA_FTYPE_MOSTLY_").removeprefix("LLAMA_FTYPE_ALL_")


@dataclass(frozen=True)
class ONNXType:
    format: str  # the artifact's format: "onnx" (ONNX Runtime) or "onnx-genai" (ORT GenAI)
    band: Band


def _band(entry: dict[str, Any]) -> Band:
    return Band(**{k: v for k, v in entry.items() if k in Band.__dataclass_fields__})


_TABLE = tomllib.loads(resources.files(__package__).joinpath("formats.toml").read_text(encoding="utf-8"))
GGUF_TYPES = {name: GGUFType(e["ftype"], _band(e), e.get("imatrix")) for name, e in _TABLE["gguf"].items()}
USES_MATRIX = tuple(n for n, t in GGUF_TYPES.items() if t.imatrix)
NEEDS_MATRIX = tuple(n for n, t in GGUF_TYPES.items() if t.imatrix == "needs")
# The ggml types llama-quantize --tensor-type takes (export.gguf.tensor_types).
GGML_TENSOR_TYPES = (
    "f32",
    "f16",
    "bf16",
    "q8_0",
    "q6_k",
    "q5_k",
    "q5_1",
    "q5_0",
    "q4_k",
    "q4_1",
    "q4_0",
    "q3_k",
    "q2_k",
    "iq4_nl",
    "iq4_xs",
    "iq3_s",
    "iq3_xxs",
    "iq2_s",
    "iq2_xs",
    "iq2_xxs",
    "iq1_m",
    "iq1_s",
)
GGUF_LORA_BAND = _band(_TABLE["gguf-lora"]["f16"])  # the adapter GGUF applied to an f16 base GGUF
ONNX_TYPES = {name: ONNXType(e["format"], _band(e)) for name, e in _TABLE["onnx"].items()}


# The file type whose band a tensor stored in a ggml type brings with it (export.gguf.tensor_types).
# q5_0, q5_1, q4_1 have no file type of their own here: they sit between q4_0 and q8_0 and bring
# no band looser than that of the 4-bit type they are used beside.
_GGML_BAND = {
    "f32": "f32",
    "f16": "f16",
    "bf16": "bf16",
    "q8_0": "q8_0",
    "q6_k": "q6_k",
    "q5_k": "q5_k_s",
    "q4_k": "q4_k_s",
    "q4_0": "q4_0",
    "q3_k": "q3_k_s",
    "q2_k": "q2_k",
    "iq4_nl": "iq4_nl",
    "iq4_xs": "iq4_xs",
    "iq3_s": "iq3_m",
    "iq3_xxs": "iq3_m",
    "iq2_s": "iq2_m",
    "iq2_xs": "iq2_m",
    "iq2_xxs": "iq2_m",
}


def band(fmt: str, type_: str, tensor_types: Any = None) -> Band | None:
    """The band of an artifact of this format and type (None: not a type edgeft exports). A GGUF
    whose tensors were stored in other ggml types (`tensor_types`, pattern → ggml type: the
    export's overrides, `fit` included) is held to the loosest band among its type's and those
    types': a tensor stored as iq4_nl brings iq4_nl's error, whatever the file's type is called."""
    if fmt == "gguf" and type_ in GGUF_TYPES:
        stored = tensor_types.values() if isinstance(tensor_types, dict) else ()  # a manifest's: any JSON
        others = [_GGML_BAND[str(g).lower()] for g in stored if str(g).lower() in _GGML_BAND]
        loosest = max([type_, *others], key=lambda t: GGUF_TYPES[t].band.kl_mean)  # ties: the type's own
        if loosest == type_:
            return GGUF_TYPES[type_].band
        wider = GGUF_TYPES[loosest].band
        return replace(
            wider,
            why=f"{loosest}'s band: export.gguf.tensor_types stores tensors of this {type_} "
            f"as {loosest}. {wider.why}",
        )
    if fmt == "gguf-lora" and type_ == "f16":
        return GGUF_LORA_BAND
    onnx = ONNX_TYPES.get(type_)
    return onnx.band if onnx is not None and onnx.format == fmt else None
