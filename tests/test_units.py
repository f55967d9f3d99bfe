"""The pure functions under verify, eval, export and the runtimes, each checked in milliseconds:
KL statistics, sampling, token-id diagnosis, edge probes, the 4-bit-grid test, the
pre-tokenizer candidates, the plain template, the type table and the stage layout."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from edgeft.core import formats, stages
from edgeft.core.config import GGUF_TYPES, ONNX_TYPES, parse_config
from edgeft.core.errors import InputError
from edgeft.core.manifest import StageWriter
from edgeft.judge.filecheck import _on_4bit_grid
from edgeft.judge.kl import kl_stats, log_softmax, summarise
from edgeft.models.base import DEFAULT_CHAT_TEMPLATE, plain_template
from edgeft.models.pretok import PREFERRED, converter_pre_tokenizers, stress_corpus
from edgeft.pipeline.verify.probes import EDGE_CASES, Probe, common_prefix, edge_probes, probes_from
from edgeft.pipeline.verify.tokens import diagnose_ids
from edgeft.runtimes import Sampling, sample

# --- KL statistics (edgeft.judge.kl) ----------------------------------------------------------------


def test_kl_of_identical_logits_is_zero_and_top1_one() -> None:
    logits = np.random.default_rng(0).normal(size=(7, 50)).astype(np.float32)
    s = kl_stats(logits, logits + 3.0)  # a constant shift is the same distribution
    assert np.allclose(s["kl"], 0, atol=1e-9)
    assert s["top1"].tolist() == [1.0] * 7
    assert np.allclose(s["dlogit"], 3.0, atol=1e-5)


def test_kl_matches_the_closed_form_of_two_coins() -> None:
    p, q = 0.9, 0.6
    ref = np.log(np.array([[p, 1 - p]]))
    other = np.log(np.array([[q, 1 - q]]))
    want = p * np.log(p / q) + (1 - p) * np.log((1 - p) / (1 - q))
    assert kl_stats(ref, other)["kl"][0] == pytest.approx(want, rel=1e-9)
    # KL is not symmetric: the reference's distribution weighs the log ratio.
    assert kl_stats(other, ref)["kl"][0] != pytest.approx(want, rel=1e-3)


def test_log_softmax_is_stable_for_huge_logits() -> None:
    out = log_softmax(np.array([[1e4, 1e4 - 1.0, -1e4]]))
    assert np.isfinite(out).all()
    assert np.exp(out).sum() == pytest.approx(1.0)


def test_summarise_pools_positions_of_every_sequence() -> None:
    a = {"kl": np.array([0.0, 1.0]), "top1": np.array([1.0, 0.0]), "dlogit": np.array([0.5, 2.0])}
    b = {"kl": np.linspace(0, 0.98, 99), "top1": np.ones(99), "dlogit": np.array([7.0] * 99)}
    s = summarise([a, b])
    assert s["positions"] == 101
    assert s["kl_max"] == 1.0
    assert s["kl_mean"] == pytest.approx((1.0 + np.linspace(0, 0.98, 99).sum()) / 101)
    assert s["top1"] == pytest.approx(100 / 101)
    assert s["max_dlogit"] == 7.0
    assert s["kl_mean"] < s["kl_p99"] <= s["kl_max"]


# --- sampling (edgeft.runtimes.sample) ----------------------------------------------------------

LOGITS = np.log(np.array([0.5, 0.3, 0.15, 0.05]))


def _draws(s: Sampling, n: int = 4000) -> np.ndarray:
    rng = np.random.default_rng(s.seed)
    return np.bincount([sample(LOGITS.copy(), s, rng) for _ in range(n)], minlength=4) / n


def test_temperature_zero_is_greedy() -> None:
    assert _draws(Sampling(temperature=0.0), 50).tolist() == [1.0, 0.0, 0.0, 0.0]


def test_temperature_one_follows_the_distribution() -> None:
    # 4000 draws: the standard error of a share is at most 0.008, so 0.03 is about 4 sigma.
    assert np.allclose(_draws(Sampling(temperature=1.0, seed=1)), [0.5, 0.3, 0.15, 0.05], atol=0.03)


def test_top_k_keeps_only_the_k_most_likely() -> None:
    freq = _draws(Sampling(temperature=1.0, top_k=2, seed=2))
    assert freq[2] == freq[3] == 0
    assert np.allclose(freq[:2], [0.5 / 0.8, 0.3 / 0.8], atol=0.03)


def test_top_p_keeps_the_smallest_nucleus_reaching_p() -> None:
    # 0.5 < 0.7 ≤ 0.5 + 0.3: the nucleus is the first two tokens.
    freq = _draws(Sampling(temperature=1.0, top_p=0.7, seed=3))
    assert freq[2] == freq[3] == 0 and freq[0] > freq[1] > 0
    # Below the first token's probability the nucleus is that token alone.
    assert _draws(Sampling(temperature=1.0, top_p=0.4, seed=3), 200).tolist() == [1.0, 0.0, 0.0, 0.0]


def test_sampling_is_reproducible_from_its_seed() -> None:
    s = Sampling(temperature=0.8, top_k=3, top_p=0.9, seed=7)
    runs = [
        [sample(LOGITS.copy(), s, rng) for _ in range(30)]
        for rng in (np.random.default_rng(7), np.random.default_rng(7))
    ]
    assert runs[0] == runs[1] and len(set(runs[0])) > 1


# --- token-id diagnosis and probes (edgeft.pipeline.verify) ----------------------------------------------

SPECIAL = {"bos": 1, "eos": 2, "added": {50: "<|im_end|>"}}


@pytest.mark.parametrize(
    ("got", "want", "cause"),
    [
        ([1, 1, 5, 6], [1, 5, 6], "BOS added twice"),
        ([5, 6], [1, 5, 6], "BOS missing"),
        ([1, 5, 6], [5, 6], "BOS added where the reference has none"),
        ([1, 5, 7, 8, 9], [1, 5, 50, 9], "the special token '<|im_end|>' (id 50) is split"),
        ([1, 5, 7], [1, 5, 6], ""),
        ([1, 5, 6], [1, 5, 6], ""),
    ],
)
def test_diagnose_ids_names_the_known_faults(got: list[int], want: list[int], cause: str) -> None:
    said = diagnose_ids(got, want, SPECIAL)
    assert said.startswith(cause) if cause else said == ""


def test_diagnose_ids_of_different_texts_only_judges_bos() -> None:
    # tokenizer=False: the ids come from different renderings, a split token says nothing.
    assert diagnose_ids([7, 5, 6], [1, 5, 50], SPECIAL, tokenizer=False) == "BOS missing"
    assert diagnose_ids([1, 5, 7, 8], [1, 5, 50], SPECIAL, tokenizer=False) == ""


def test_common_prefix() -> None:
    assert common_prefix([1, 2, 3], [1, 2, 4, 5]) == 2
    assert common_prefix("abc", "abc") == 3
    assert common_prefix([], [1]) == 0


ROWS = [
    {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": f"question {i}"},
            {"role": "assistant", "content": f"answer {i}"},
        ]
    }
    for i in range(5)
]


def _chars(messages: list[dict[str, str]]) -> int:  # a stand-in tokenizer: one token per character
    return sum(len(m["content"]) for m in messages)


def test_probes_from_validation_rows_split_prompt_and_answer() -> None:
    probes = probes_from(ROWS + [{"text": "plain text row"}], 10)
    assert [p.name for p in probes] == [f"validation[{i}]" for i in range(6)]
    assert probes[0].messages == ROWS[0]["messages"][:-1] and probes[0].answer == "answer 0"
    assert probes[0].plain_text == "question 0 answer 0"
    assert probes[5].messages is None and probes[5].plain_text == "plain text row"
    assert len(probes_from(ROWS, 2)) == 2


def test_edge_probes_keep_the_system_prompt_and_fill_the_budget() -> None:
    probes = edge_probes(probes_from(ROWS, 5), _chars, budget=200)
    names = [p.name for p in probes]
    assert names[: len(EDGE_CASES)] == list(EDGE_CASES)
    assert all(p.edge and p.answer is None and p.messages[0]["content"] == "Be brief." for p in probes)
    near = probes[-1]
    assert near.name.startswith("edge:near-context(")
    n = _chars(near.messages)
    assert near.name == f"edge:near-context({n} tokens)"
    # As long as fits, no more: one more line ("\nquestion k", 11 characters) would pass the budget.
    assert 200 - 11 < n <= 200


def test_edge_probes_need_a_conversation() -> None:
    assert edge_probes([Probe("validation[0]", None, "text")], _chars, 100) == []


# --- files and templates ------------------------------------------------------------------------


def test_4bit_grid_tells_dequantized_weights_from_float_ones() -> None:
    rng = np.random.default_rng(0)
    floats = rng.normal(size=(64, 64)).astype(np.float32)
    levels = rng.normal(size=(64, 16)).astype(np.float32)  # 16 values per block of 64: NF4-like
    on_grid = np.take_along_axis(levels, rng.integers(0, 16, size=(64, 64)), axis=1)
    assert _on_4bit_grid(on_grid) and not _on_4bit_grid(floats)
    assert not _on_4bit_grid(on_grid[:2])  # too few blocks to judge


def test_plain_template_drops_generation_markers_only() -> None:
    plain = plain_template(DEFAULT_CHAT_TEMPLATE)
    assert "{% generation %}" in DEFAULT_CHAT_TEMPLATE and "{% generation %}" not in plain
    assert plain_template("{%- generation -%}x{%- endgeneration %}") == "x"
    import jinja2

    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
    ext = jinja2.Environment(extensions=["jinja2.ext.do"])
    rendered = ext.from_string(plain).render(
        messages=messages, bos_token="<s>", eos_token="</s>", add_generation_prompt=False
    )
    assert rendered == "<s>### User:\nhi\n\n### Assistant:\nyo</s>\n\n"


def test_pre_tokenizer_candidates_come_preferred_first_without_repeats(tmp_path: Path) -> None:
    (tmp_path / "conversion").mkdir()
    (tmp_path / "conversion" / "base.py").write_text(
        'if x:\n    res = "zeta"\nelif y:\n    res = "llama-bpe"\n    res = "zeta"\n    res = "gpt-2"\n'
    )
    assert converter_pre_tokenizers(tmp_path) == ["gpt-2", "llama-bpe", "zeta"]
    (tmp_path / "conversion" / "base.py").write_text("nothing here\n")
    with pytest.raises(RuntimeError, match="no pre-tokenizer names"):
        converter_pre_tokenizers(tmp_path)
    assert PREFERRED[0] == "gpt-2"


def test_stress_corpus_is_deterministic_and_covers_its_pieces() -> None:
    corpus = stress_corpus()
    assert corpus == stress_corpus() and corpus != stress_corpus(seed=1)
    assert (
        any("½" in t for t in corpus)
        and any("\u200d" in t for t in corpus)
        and any("  " in t for t in corpus)
    )


# --- the type table and the stage layout --------------------------------------------------------


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


def test_stage_directories_and_hints(tmp_path: Path) -> None:
    cfg = parse_config(
        {"name": "m", "base_model": "tiny:micro", "data": {"train": "d.jsonl"}}, str(tmp_path / "edgeft.yaml")
    )
    assert stages.directory(cfg, stages.MERGE) == tmp_path / "runs" / "m" / "merge"
    assert stages.directory(cfg, stages.DIST) == tmp_path / "dist" / "m"
    assert stages.directory(cfg, stages.EVAL, tmp_path / "x") == tmp_path / "x"
    assert set(stages.PRODUCED_BY) == set(stages.ORDER)
    with pytest.raises(InputError, match="run `edgeft merge -c CONFIG` first"):
        stages.load(cfg, stages.MERGE)


def _stage(dest: Path, kind: str, parent: Path | None = None) -> Path:
    with StageWriter(dest, kind, parent=str(parent) if parent else None, resolved_base="/models/base") as w:
        (w.tmp / "f.txt").write_text(kind)
        w.add_artifact("f", "f.txt", "text")
        w.publish()
    return dest


def test_ancestor_walks_the_parents(tmp_path: Path) -> None:
    merge = _stage(tmp_path / "merge", stages.MERGE)
    export = _stage(tmp_path / "export-gguf", stages.EXPORT_GGUF, merge)
    verify = _stage(tmp_path / "verify", stages.VERIFY, merge)
    dist = stages.read(_stage(tmp_path / "dist", stages.DIST, verify), stages.DIST)
    assert dist.ancestor(stages.MERGE).path == merge
    assert dist.ancestor(stages.DIST) is dist
    assert stages.read(export, stages.EXPORTS).resolved_base == "/models/base"
    assert json.loads((merge / "edgeft.json").read_text())["resolved_base"] == "/models/base"
    with pytest.raises(InputError, match="the 'train' stage it was made from"):
        dist.ancestor(stages.TRAIN)


def test_the_mistral_regex_false_alarm_is_dropped_for_other_models(tmp_path: Path) -> None:
    """transformers 4.57.6 warns about Mistral's regex for any local tokenizer over 100k tokens
    (transformers#44031): edgeft drops it where config.json is not a Mistral model, and only there."""
    import logging

    from edgeft.cli import _mistral_regex_false_alarm

    def record(folder: Path) -> logging.LogRecord:
        message = (
            f"The tokenizer you are loading from '{folder}' with an incorrect regex pattern: https://x. "
            "You should set the `fix_mistral_regex=True` flag when loading this tokenizer to fix this issue."
        )
        return logging.LogRecord(
            "transformers.tokenization_utils_base", logging.WARNING, "", 0, message, None, None
        )

    for model_type, shown in (("gemma3_text", False), ("qwen2", False), ("mistral", True)):
        folder = tmp_path / model_type
        folder.mkdir()
        (folder / "config.json").write_text(json.dumps({"model_type": model_type}))
        assert _mistral_regex_false_alarm(record(folder)) is shown, model_type
    assert _mistral_regex_false_alarm(record(tmp_path / "missing")) is True
    other = logging.LogRecord("transformers", logging.WARNING, "", 0, "something else", None, None)
    assert _mistral_regex_false_alarm(other) is True


def test_kl_counts_each_context_once_and_reference_ties_agree() -> None:
    """Probes that share a system prompt count its positions once; a flip between two tokens the
    reference holds within kl.TIE nats agrees, a flip beyond it does not; chunked like one pass."""
    import numpy as np

    from edgeft.judge import kl

    masks = kl.distinct_contexts([[1, 2, 3, 4], [1, 2, 5], [1, 2, 3, 4, 6], [7]])
    assert [m.tolist() for m in masks] == [[True] * 4, [False, False, True], [False] * 4 + [True], [True]]

    ref = np.log(np.array([[0.5, 0.498, 0.002], [0.6, 0.3, 0.1], [0.2, 0.7, 0.1]], dtype=np.float32))
    other = np.log(np.array([[0.49, 0.508, 0.002], [0.3, 0.6, 0.1], [0.2, 0.7, 0.1]], dtype=np.float32))
    stats = kl.kl_stats(ref, other)
    assert stats["top1"].tolist() == [1.0, 0.0, 1.0]  # a 0.4% tie, a real flip, the same token
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(2, 3 * kl.ROWS + 5, 50)).astype(np.float32)
    whole = kl.log_softmax(a), kl.log_softmax(b)
    expected = (np.exp(whole[0]) * (whole[0] - whole[1])).sum(-1)
    np.testing.assert_allclose(kl.kl_stats(a, b)["kl"], expected, rtol=1e-9)
    assert kl.only(kl.kl_stats(a, b), masks[1][:1].repeat(len(a)))["kl"].size == 0


def test_bos_added_is_a_token_before_the_text_not_an_appended_eos() -> None:
    from edgeft.runtimes import Runtime

    class Fake(Runtime):
        name = "fake"

        def __init__(self, before: list[int], after: list[int]) -> None:
            self.before, self.after = before, after

        def tokenize(self, text: str, add_special: bool = True) -> list[int]:
            return [*self.before, 7, *self.after] if add_special else [7]

        def render_chat(self, messages):  # type: ignore[no-untyped-def]
            return ""

        def logits(self, ids):  # type: ignore[no-untyped-def]
            raise NotImplementedError

        def special_tokens(self):  # type: ignore[no-untyped-def]
            return {}

    assert Fake([1], []).bos_added() == 1
    assert Fake([], [2]).bos_added() is None  # an EOS appended, no BOS
    assert Fake([1], [2]).bos_added() == 1
    assert Fake([], []).bos_added() is None
