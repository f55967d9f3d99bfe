"""Drop-in publishing (fast): Ollama Modelfiles from a verify report, and the JavaScript Jinja
check (@huggingface/jinja, as LM Studio and transformers.js render templates) on templates that
Python's jinja2 renders differently or not at all."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import jinja2
import numpy as np
import pytest

from edgeft.core.errors import InputError
from edgeft.pipeline.verify.checks import Checks
from edgeft.pipeline.verify.jsjinja import engine, js_template
from edgeft.pipeline.verify.probes import Probe, Reference
from edgeft.pipeline.verify.report import VerifyReport
from edgeft.runtimes import Runtime
from edgeft.ship.publish import modelfile


def parse_modelfile(text: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.setdefault(word, []).append(rest)
    return out


def report(stop: list[int], reference: list[int]) -> dict[str, Any]:
    """A report.json as verify writes it, reduced to what the Modelfile needs."""
    return {
        "context_tokens": 2048,
        "stops": {"reference": reference, "tokens": {"2": "</s>", "4": "<|im_end|>"}},
        "artifacts": {"gguf-q8_0": {"checks": {"special_tokens": {"stop": stop}}}},
    }


def test_modelfile_has_the_verified_stops_context_and_license() -> None:
    text = modelfile(
        "m-q8_0.gguf",
        VerifyReport.from_json(report([2, 4], [4])).stop_strings("gguf-q8_0"),
        2048,
        "apache-2.0",
    )
    parsed = parse_modelfile(text)
    assert parsed["FROM"] == ["./m-q8_0.gguf"] and "ADAPTER" not in parsed and "TEMPLATE" not in parsed
    assert parsed["PARAMETER"] == ['stop "</s>"', 'stop "<|im_end|>"', "num_ctx 2048"]
    assert parsed["LICENSE"] == ['"""apache-2.0"""']
    lora = parse_modelfile(modelfile("base-f16.gguf", ["<|im_end|>"], 512, None, adapter="adapter-f16.gguf"))
    assert (
        lora["FROM"] == ["./base-f16.gguf"]
        and lora["ADAPTER"] == ["./adapter-f16.gguf"]
        and "LICENSE" not in lora
    )


def test_modelfile_refuses_an_artifact_that_does_not_stop_where_the_reference_did() -> None:
    with pytest.raises(InputError, match=r"reference stops on token\(s\) \[4\]"):
        VerifyReport.from_json(report([2], [4])).stop_strings("gguf-q8_0")
    old = report([2, 4], [4])
    del old["stops"]
    with pytest.raises(InputError, match="older edgeft"):
        VerifyReport.from_json(old).stop_strings("gguf-q8_0")


class TemplateOnly(Runtime):
    """An artifact reduced to its chat template: what the JS check reads from a runtime."""

    name = "template"

    def __init__(self, template: str):
        self.template = template

    def template_tokens(self) -> dict[str, str]:
        return {"bos_token": "<s>", "eos_token": "</s>"}

    def tokenize(self, text: str, add_special: bool = True) -> list[int]:
        raise NotImplementedError

    def render_chat(self, messages: Any) -> str:
        raise NotImplementedError

    def logits(self, ids: list[int]) -> np.ndarray:
        raise NotImplementedError

    def special_tokens(self) -> dict[str, Any]:
        raise NotImplementedError


def _check(template: str) -> dict[str, Any]:
    """The JS check of `template` against its jinja2 rendering (transformers renders with jinja2)."""
    probes = [
        Probe("p0", [{"role": "user", "content": "héllo wörld, ünïcode"}], None),
        Probe("p1", [{"role": "user", "content": "plain"}], None),
    ]
    env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True)
    prompts = [
        env.from_string(template).render(
            messages=p.conversation, add_generation_prompt=True, bos_token="<s>", eos_token="</s>"
        )
        for p in probes
    ]
    ref = Reference(prompts, [], [], [], [], [], {}, None)
    checks = Checks("artifact")
    js_template(TemplateOnly(template), ref, probes, checks)
    return checks.results["js_template"]


CHATML = (
    "{{ bos_token }}{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


@pytest.mark.skipif(
    isinstance(engine(), str), reason="needs Node.js and @huggingface/jinja (scripts/setup.sh)"
)
def test_js_jinja_check_passes_chatml_and_catches_what_the_js_engine_does_differently() -> None:
    assert _check(CHATML).passed
    failed = _check(CHATML.replace("m['content']", "'%s' | format(m['content'])"))  # no `format` filter in JS
    assert not failed.passed and "cannot render" in failed.detail and "format" in failed.detail
    differs = _check(
        CHATML.replace("m['content']", "m['content'].title()")
    )  # JS title-cases ASCII letters only
    assert not differs.passed and "renders p0 differently" in differs.detail


def test_js_jinja_check_says_skipped_without_node(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("EDGEFT_JS", str(tmp_path / "nothing"))
    result = _check(CHATML)
    assert result.skipped and result.detail.startswith("skipped:")
    if shutil.which("node"):
        assert "not installed" in result.detail
