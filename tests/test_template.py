"""Chat templates rendered bounded (edgeft.models.template): what `guard` lets through and what it
refuses, before any runtime renders a template edgeft did not write."""

from __future__ import annotations

import pytest

from edgeft.models.template import SAMPLES, TemplateRefused, guard

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def test_an_ordinary_template_renders() -> None:
    guard(CHATML, [{"role": "user", "content": "Hi"}])
    guard(CHATML)  # the sample conversations
    guard(None)  # no template: nothing to check


def test_a_template_building_a_huge_string_is_refused_in_its_own_words() -> None:
    with pytest.raises(TemplateRefused, match=r"^the model: its chat template was stopped"):
        guard("{{ 'x' * 200000000 }}")
    with pytest.raises(TemplateRefused, match="rendered prompt passes"):
        guard("{% for i in range(100000) %}{{ 'y' * 100 }}{% endfor %}", source="the model")


def test_a_template_that_refuses_the_conversation_is_named_with_its_reason() -> None:
    no_system = (
        "{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
        + CHATML
    )
    guard(no_system)  # the samples only test the bounds: many templates refuse a system turn
    with pytest.raises(
        TemplateRefused, match="x.gguf: its chat template refuses the conversation: System role"
    ):
        guard(no_system, SAMPLES[0], source="x.gguf")
