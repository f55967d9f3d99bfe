"""Templates and tokenizers (edgeft.models): the plain template, the pre-tokenizer candidates and
stress corpus, and the Mistral-regex false alarm."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgeft.models.base import DEFAULT_CHAT_TEMPLATE, plain_template
from edgeft.models.pretok import PREFERRED, converter_pre_tokenizers, stress_corpus


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
