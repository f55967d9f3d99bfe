"""The artifact types edgeft exports, in one table: what each is called in the config, what
produces it, and the band verify holds it to. Adding a type is one entry here (a test fails
for a type without a band, or one llama.cpp does not know).
"""

from __future__ import annotations

from dataclasses import dataclass


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


@dataclass(frozen=True)
class ONNXType:
    format: str  # the artifact's format: "onnx" (ONNX Runtime) or "onnx-genai" (ORT GenAI)
    band: Band


# Each band: mean KL, p99 KL, top-1 and generation prefix that the type explains, with what was
# measured (verify's own probes; mean KL / top-1) on SmolLM2-135M-Instruct (the nl2sql-smollm2
# example, 2026-11-23), on the tiny example (tiny:small), and llama.cpp's published mean KLD for
# the type (tools/perplexity/README.md of the pinned llama.cpp: Llama-3-8B, Wikitext-2, no
# importance matrix). SmolLM2's hidden width 576 is not a multiple of the K-quants' 256, so
# llama.cpp falls back for 180 of its tensors (q4_k_m → q5_0 6.2 bpw, q5_k_m → q5_1 6.6 bpw,
# q6_k → q8_0): a real 135M model loses far more than an 8B one, and a band must not call the
# type's own error a fault. The statistics gated do not grow with the number of probe positions
# (a maximum does: it is reported, not gated). Behaviour faults (template, tokens, stops,
# weights, hyperparameters) are caught by their own checks, whatever the band.
GGUF_TYPES: dict[str, GGUFType] = {
    "f32": GGUFType("LLAMA_FTYPE_ALL_F32", Band(1e-4, 2e-3, 0.99, 0.95,
        "same weights; float summation order only. SmolLM2 3.7e-6 / 1.0; tiny 2.4e-7 / 1.0")),
    "bf16": GGUFType("LLAMA_FTYPE_MOSTLY_BF16", Band(5e-3, 0.05, 0.97, 0.9,
        "8-bit mantissa weights. SmolLM2 3.6e-4 / 1.0; tiny 3.0e-5 / 0.997")),
    "f16": GGUFType("LLAMA_FTYPE_MOSTLY_F16", Band(1e-3, 0.01, 0.98, 0.9,
        "10-bit mantissa weights. SmolLM2 1.6e-5 / 1.0; tiny 6.3e-7 / 1.0; llama.cpp 5.5e-4 (its f16 "
        "logit storage)")),
    "q8_0": GGUFType("LLAMA_FTYPE_MOSTLY_Q8_0", Band(0.03, 0.3, 0.93, 0.8,
        "8-bit blocks of 32, int8 activations in the dot products. SmolLM2 0.011 / 0.963; tiny 4.2e-4"
        " / 0.982; llama.cpp 1.4e-3 (same top token 97.7%)")),
    "q6_k": GGUFType("LLAMA_FTYPE_MOSTLY_Q6_K", Band(0.1, 1.0, 0.9, 0.7,
        "6-bit K-quant (q8_0 where the width is not a multiple of 256). SmolLM2 0.045 / 0.952; tiny "
        "2.5e-3 / 0.982; llama.cpp 5.5e-3 (96.0%)")),
    "q5_k_m": GGUFType("LLAMA_FTYPE_MOSTLY_Q5_K_M", Band(1.0, 8.0, 0.7, 0.5,
        "5-bit K-quant; falls back to q5_1 at width 576, which loses more than q4_k_m's q5_0 there. "
        "SmolLM2 0.50 / 0.770; tiny 6.7e-3 / 0.963; llama.cpp 0.011")),
    "q4_k_m": GGUFType("LLAMA_FTYPE_MOSTLY_Q4_K_M", Band(0.4, 3.0, 0.82, 0.5,
        "4-bit K-quant, 6-bit for sensitive tensors (q5_0 / q8_0 at width 576). SmolLM2 0.15 / 0.899;"
        " tiny 0.026 / 0.884; llama.cpp 0.031 (91.9%)")),
    "q4_0": GGUFType("LLAMA_FTYPE_MOSTLY_Q4_0", Band(2.0, 10.0, 0.5, 0.3,
        "4-bit blocks of 32, no refinements: a 135M model barely survives it. SmolLM2 1.07 / 0.601; "
        "tiny 0.030 / 0.861; llama.cpp 0.072")),
    "q3_k_m": GGUFType("LLAMA_FTYPE_MOSTLY_Q3_K_M", Band(1.0, 8.0, 0.6, 0.3,
        "3-bit K-quant (q4_0 / q5_0 at width 576). SmolLM2 0.47 / 0.713; tiny 0.10 / 0.790; llama.cpp"
        " 0.10")),
    "q2_k": GGUFType("LLAMA_FTYPE_MOSTLY_Q2_K", Band(2.5, 15.0, 0.45, 0.2,
        "2-bit K-quant: only a size option. SmolLM2 1.12 / 0.605; tiny 0.21 / 0.679; llama.cpp 0.45 "
        "(71.1%)")),
}

# The adapter as its own GGUF, applied to an f16 base GGUF at load time (export.gguf.lora).
GGUF_LORA_BAND = Band(2e-3, 0.02, 0.97, 0.9,
    "f16 base + f16 adapter applied at run time. SmolLM2 1.6e-5 / 1.0; tiny 8.6e-7 / 1.0")

ONNX_TYPES: dict[str, ONNXType] = {
    "fp32": ONNXType("onnx", Band(1e-5, 1e-4, 0.999, 1.0,
        "same fp32 graph; ~1e-5 kernel differences in logits. SmolLM2 2.5e-11; tiny 6.9e-13")),
    "fp16": ONNXType("onnx", Band(1e-3, 0.01, 0.98, 0.9,
        "fp16 weights and activations, fp32 inputs and outputs; the error grows with position "
        "(tiny:small: mean KL 1e-5 over positions 0-100, 0.015 over 850-950, with rotary, norms and "
        "softmax kept in fp32 alike). SmolLM2 1.3e-5 / 1.0; tiny 4.7e-6 / 1.0", edge_kl_mean=0.02, edge_top1=0.93)),
    "int8": ONNXType("onnx", Band(0.01, 0.1, 0.93, 0.8,
        "int8 weights in blocks of 16 with int8 activations per block (like q8_0), value and down "
        "projections kept fp32. SmolLM2 2.5e-3 / 0.982 (all projections int8: 6.3e-3 / 0.965; ONNX "
        "Runtime's dynamic int8: 1.2 / 0.61); tiny 9.1e-5 / 0.999")),
    "int4": ONNXType("onnx-genai", Band(0.4, 3.0, 0.82, 0.5,
        "k-quant int4 in blocks of 16 for the MLP's gate and up, the other projections and the output"
        " matrix int8, int8 activations (accuracy level 4): about q4_k_m's mix. SmolLM2 0.16 / 0.921 "
        "(builder default RTN int4: 1.12 / 0.61); tiny 3.0e-3 / 0.947")),
}


def band(fmt: str, type_: str) -> Band | None:
    """The band of an artifact of this format and type (None: not a type edgeft exports)."""
    if fmt == "gguf" and type_ in GGUF_TYPES:
        return GGUF_TYPES[type_].band
    if fmt == "gguf-lora" and type_ == "f16":
        return GGUF_LORA_BAND
    onnx = ONNX_TYPES.get(type_)
    return onnx.band if onnx is not None and onnx.format == fmt else None
