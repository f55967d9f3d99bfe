"""The tiny-model kit: reproducible, and tokenised identically by HF and llama.cpp."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgeft.core.fileio import file_table

pytestmark = pytest.mark.slow


def test_same_seed_gives_the_same_files(micro_model: Path, tmp_path: Path) -> None:
    from edgeft.models.tiny import build_tiny_model

    again = build_tiny_model(tmp_path / "again", "micro", 0)
    assert file_table(again) == file_table(micro_model)


def test_model_directory_is_what_design_asks_for(micro_model: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(micro_model)
    config = json.loads((micro_model / "config.json").read_text())
    gen = json.loads((micro_model / "generation_config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and config["hidden_size"] == 64
    assert tok.chat_template.startswith("{{ bos_token }}") and "{% generation %}" in tok.chat_template
    assert tok.convert_tokens_to_ids("<|im_end|>") in gen["eos_token_id"]
    # No dummy prefix: a leading space is a token of its own, not folded into the first word.
    assert tok.tokenize("hi") != tok.tokenize(" hi")[1:] or tok.tokenize(" hi")[0] == "▁"
    assert json.loads((micro_model / "edgeft_tiny.json").read_text())["final_pretrain_loss"] < 1.5


def test_hf_and_llama_cpp_tokenise_identically(micro_model: Path, tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    from edgeft.pipeline.export.gguf import convert_hf
    from edgeft.runtimes.llamacpp import LlamaCppRuntime

    gguf = tmp_path / "m.gguf"
    convert_hf(micro_model, gguf, "micro", outtype="f32")
    tok = AutoTokenizer.from_pretrained(micro_model)
    texts = [
        "Hello world",
        " leading space",
        "trailing  ",
        "héllo ünïcode 日本語 🙂",
        "SELECT * FROM books WHERE id = 3;",
        "a\n\nb\tc",
        "<|im_start|>user\nhi<|im_end|>",
        "",
    ]
    with LlamaCppRuntime(gguf) as rt:
        for text in texts:
            assert rt.tokenize(text) == tok(text)["input_ids"], text
        messages = [{"role": "user", "content": "What is 3 plus 4?"}]
        assert rt.chat_prompt(messages) == tok.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True
        )


def test_k_quant_fallbacks_are_reported(micro_model: Path, tmp_path: Path) -> None:
    """llama.cpp reports success when it gives tensors another type; edgeft records each one."""
    from edgeft.pipeline.export.gguf import convert_hf, quantize

    f32 = tmp_path / "m-f32.gguf"
    convert_hf(micro_model, f32, "micro", outtype="f32")
    fallbacks = quantize(f32, tmp_path / "m-q4_k_m.gguf", "q4_k_m")
    # micro's rows are 64 or 128 wide, not multiples of the K-quant block of 256.
    # token_embd and the 7 weights of each of the 2 blocks (output.weight gets q8_0 up front).
    assert len(fallbacks) == 15
    assert "token_embd.weight" in {f["tensor"] for f in fallbacks}
    assert {f["block"] for f in fallbacks} == {256}
    assert {(f["wanted"], f["used"]) for f in fallbacks} <= {("q4_K", "q5_0"), ("q6_K", "q8_0")}
    assert quantize(f32, tmp_path / "m-q8_0.gguf", "q8_0") == []
