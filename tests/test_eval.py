"""edgeft eval: metrics, the results in dist/, and the regression gate failing `eval` and `build`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import resign

from edgeft.cli import cli
from edgeft.core.config import parse_config
from edgeft.core.errors import ConfigError, InputError
from edgeft.core.fileio import sha256_file
from edgeft.pipeline.evaluate import Checks, format_checker, score, squash_whitespace


def run(*args: str):
    return CliRunner().invoke(cli, list(args))


def _cfg(tmp_path: Path, **eval_section):
    return parse_config(
        {"name": "x", "base_model": "tiny:micro", "data": {"train": "d.jsonl"}, "eval": eval_section},
        str(tmp_path / "edgeft.yaml"),
    )


def test_exact_match_ignores_whitespace_only() -> None:
    assert squash_whitespace("  SELECT *\n FROM  t; ") == "SELECT * FROM t;"
    s = score(["SELECT * FROM t;", "select * from t;"], ["SELECT *  FROM t;", "SELECT * FROM t;"], Checks())
    assert s["exact_match"] == 0.5
    assert 0 < s["chrf"] < 100 and "format" not in s


def test_format_compliance_regex_json_and_schema(tmp_path: Path) -> None:
    check, desc = format_checker(_cfg(tmp_path, regex="SELECT [^;]+;"))
    assert [check(t) for t in ("SELECT a FROM t;", " SELECT a FROM t; ", "SELECT a FROM t; extra")] == [
        1,
        1,
        0,
    ]
    check, _ = format_checker(_cfg(tmp_path, json=True))
    assert [check(t) for t in ('{"a": 1}', "{'a': 1}", "[1, 2]")] == [True, False, True]
    (tmp_path / "schema.json").write_text(
        json.dumps({"type": "object", "required": ["sql"], "properties": {"sql": {"type": "string"}}})
    )
    check, desc = format_checker(_cfg(tmp_path, json_schema="schema.json"))
    assert [check(t) for t in ('{"sql": "SELECT 1;"}', '{"sql": 1}', '{"query": "x"}', "nope")] == [
        1,
        0,
        0,
        0,
    ]
    assert desc == "JSON valid against schema.json"
    assert score(['{"sql": "a"}', "b"], ["x", "y"], Checks(check))["format"] == 0.5
    # A remote $ref is never fetched (jsonschema's default would): the check names the reference.
    (tmp_path / "schema.json").write_text(
        json.dumps({"properties": {"sql": {"$ref": "https://example.com/s"}}})
    )
    check, _ = format_checker(_cfg(tmp_path, json_schema="schema.json"))
    with pytest.raises(InputError, match="a \\$ref edgeft cannot resolve"):
        check('{"sql": "x"}')


def test_eval_config_is_validated(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as e:
        _cfg(tmp_path, regex="SELECT (", min_relative=1.5, json=True)
    text = str(e.value)
    assert "eval.regex: not a valid regular expression" in text
    assert "eval.min_relative: 1.5 must be in (0, 1]" in text
    assert "eval: give at most one of json, json_schema and regex" in text


@pytest.mark.slow
def test_eval_results_are_in_the_dist_and_model_card(built: dict) -> None:
    dist = built["dist"]
    results = json.loads((dist / "eval" / "results.json").read_text())
    models = results["models"]
    assert set(models) == {"fine-tuned", "base", "gguf-f16", "gguf-q8_0", "onnx-fp32"}
    fine, base = models["fine-tuned"]["scores"], models["base"]["scores"]
    assert fine["chrf"] > base["chrf"] + 10  # the fine-tune learned the task's form
    assert results["improvement"]["chrf"] == pytest.approx(fine["chrf"] - base["chrf"])
    # ONNX fp32 is the same computation: the same greedy answers, the same scores.
    assert models["onnx-fp32"]["scores"] == pytest.approx(fine)
    for name in ("gguf-f16", "gguf-q8_0", "onnx-fp32"):  # each compared on the same examples, with a verdict
        assert models[name]["passed"] and set(models[name]["paired"]) == set(models[name]["scores"])
        assert all(not v.startswith("worse") for v in models[name]["verdicts"].values())
    assert models["onnx-fp32"]["paired"]["exact_match"]["losses"] == 0
    assert results["per_example"]["answers"]["onnx-fp32"] == results["per_example"]["answers"]["fine-tuned"]
    manifest = json.loads((dist / "manifest.json").read_text())
    assert manifest["evaluation"]["passed"] is True
    assert manifest["evaluation"]["scores"]["base"] == base
    card = (dist / "README.md").read_text()
    assert "## Evaluation" in card and "| fine-tuned | transformers |" in card
    assert (dist / "eval" / "results.md").read_text().startswith("# edgeft eval results")


@pytest.mark.slow
def test_regression_gate_fails_eval_and_build(built: dict, other_micro_model: Path, tmp_path: Path) -> None:
    """An artifact that answers worse than the fine-tuned model fails `edgeft eval` (exit 8); `edgeft
    build` verifies the changed bytes again first and the parity gate stops it (exit 7)."""
    from edgeft.pipeline.export.gguf import convert_hf

    root = tmp_path / "project"
    shutil.copytree(built["root"], root)
    cfg = str(root / "edgeft.yaml")
    export = root / "runs" / "micro" / "export-gguf"
    convert_hf(
        other_micro_model, export / "micro-q8_0.gguf", "micro", outtype="q8_0"
    )  # another model's weights
    resign(export, "micro-q8_0.gguf")

    result = run("-q", "eval", "-c", cfg, "--out", str(tmp_path / "eval"))
    assert result.exit_code == 8, result.output
    assert "Error: evaluation: " in result.stderr and "gguf-q8_0: chrf " in result.stderr
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert results["passed"] is False and results["models"]["gguf-f16"]["passed"] is True

    dist_before = sha256_file(root / "dist" / "micro" / "manifest.json")
    # The verify report was made on other bytes: build verifies again before evaluating, and the
    # parity gate stops it first (the eval gate stopping a build: test_example_build, q2_k).
    result = run("-q", "build", "-c", cfg, "--set", "eval.max_new_tokens=100")
    assert result.exit_code == 7, result.output
    assert "gguf-q8_0: kl_mean" in result.stderr
    assert sha256_file(root / "dist" / "micro" / "manifest.json") == dist_before  # the dist was not replaced


@pytest.mark.slow
def test_general_prompts_compare_base_and_fine_tuned(built: dict, tmp_path: Path) -> None:
    """The user's general-capability prompts (here: the tiny base's own pre-training chat tasks)
    are answered by base and fine-tuned model; a chrF drop beyond the tolerance is flagged."""
    words = ["apple", "river", "stone", "cloud", "engine", "paper", "garden", "window", "silver", "orange"]
    general = tmp_path / "general.jsonl"
    general.write_text(
        "".join(
            json.dumps({"prompt": f"Repeat: {a} {b} {c}", "completion": f"{a} {b} {c}"}) + "\n"
            for a, b, c in zip(words, words[3:] + words[:3], words[6:] + words[:6], strict=True)
        )
    )
    out = tmp_path / "eval"
    result = run(
        "-q",
        "eval",
        "-c",
        str(built["config"]),
        "--out",
        str(out),
        "--set",
        f"eval.general_prompts={general}",
        "--set",
        "eval.forgetting_tolerance=0.0",
    )
    assert result.exit_code == 0, result.output
    g = json.loads((out / "results.json").read_text())["general"]
    assert g["prompts"] == 10
    base, fine = g["scores"]["base"]["chrf"], g["scores"]["fine-tuned"]["chrf"]
    assert g["chrf_drop"] == pytest.approx(1 - fine / base)
    assert g["forgetting"] == (g["chrf_drop"] > 0.0)
    assert "General-capability prompts (10)" in (out / "results.md").read_text()
