"""The artifact-type table (edgeft.core.formats): every type the config accepts has a band and a
producer, coarser tensors bring their band, and bands are ordered as their statistics."""

from __future__ import annotations

import dataclasses

from edgeft.core import formats
from edgeft.core.config import GGUF_TYPES, ONNX_TYPES


def test_every_type_the_config_accepts_has_a_band_and_a_producer() -> None:
    import llama_cpp

    for t in GGUF_TYPES:
        assert formats.band("gguf", t) is not None, t
        assert isinstance(getattr(llama_cpp, formats.GGUF_TYPES[t].ftype), int), t
    for t in ONNX_TYPES:
        assert formats.band(formats.ONNX_TYPES[t].format, t) is not None, t
    assert formats.band("gguf-lora", "f16") is not None
    assert formats.band("gguf", "q9_9") is None and formats.band("onnx", "int4") is None  # int4 is onnx-genai


def test_tensors_stored_in_a_coarser_type_bring_that_types_band() -> None:
    q4_k_m = formats.band("gguf", "q4_k_m")
    # The SmolLM2 example's q4_k_m keeps its embedding at iq4_nl: iq4_nl's error is now in the file.
    wider = formats.band("gguf", "q4_k_m", {"token_embd": "iq4_nl"})
    assert wider == dataclasses.replace(formats.band("gguf", "iq4_nl"), why=wider.why)
    assert wider.kl_mean > q4_k_m.kl_mean and "iq4_nl" in wider.why
    # Finer tensors (fit's q5_0, a q8_0 attention) or a manifest's junk never loosen or break it.
    for overrides in ({"attn_v": "q8_0"}, {"x": "q5_0"}, {"x": "Q8_0"}, {"x": 3}, ["iq2_xs"], "iq2_xs", None):
        assert formats.band("gguf", "q4_k_m", overrides) == q4_k_m, overrides
    assert (
        formats.band("gguf", "q8_0", {"ffn_down": "Q4_K"}).kl_mean == formats.band("gguf", "q4_k_s").kl_mean
    )


def test_every_band_is_ordered_as_its_statistics() -> None:
    for band in [t.band for t in formats.GGUF_TYPES.values()] + [t.band for t in formats.ONNX_TYPES.values()]:
        assert 0 < band.kl_mean <= band.kl_p99 and 0 < band.top1 <= 1 and 0 < band.gen_prefix <= 1, band.why
        assert band.edge_limit >= band.kl_mean and band.edge_top1_limit <= band.top1
