"""Quantization calibrated on the task: llama.cpp's tools built at set-up, `imatrix: auto` with its
lineage, the IQ and K-quant "s" types each held to its band, and per-tensor types ("fit"), on the
tiny "small" model (widths that K-quants take) and the micro model (widths they cannot)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import EXAMPLE, write_config

from edgeft.cli import cli
from edgeft.core import formats
from edgeft.models import llama_tools

NEW_TYPES = ["q5_k_s", "q4_k_s", "q3_k_s", "iq4_nl", "iq4_xs", "iq3_m", "iq2_m"]


def test_llama_tools_are_the_wheel_s_llama_cpp() -> None:
    """Set-up built the tools from the pinned source package against the installed wheel's own
    libraries: the shared libraries beside them are byte for byte the ones llama-cpp-python loads."""
    import llama_cpp

    pin = (Path(__file__).resolve().parent.parent / "vendor" / "PIN").read_text()
    source = llama_tools.source()
    assert f"llama_cpp_python-{source['sdist'].split('-')[1].removesuffix('.tar.gz')}" in source["sdist"]
    assert source["sdist_sha256"] in pin
    for name in llama_tools.TOOLS:
        assert llama_tools.tool(name).is_file()
    installed = Path(llama_cpp.__file__).parent / "lib" / "libllama.so.0"
    ours = llama_tools.tools_dir() / "lib" / "libllama.so.0"
    assert hashlib.sha256(installed.read_bytes()).digest() == hashlib.sha256(ours.read_bytes()).digest()


def test_matrix_types_need_a_matrix_and_tensor_types_are_checked(tmp_path: Path) -> None:
    from edgeft.core.config import parse_config
    from edgeft.core.errors import ConfigError

    base = {"name": "m", "base_model": "tiny:micro", "data": {"train": "x.jsonl"}}
    with pytest.raises(ConfigError, match="iq2_m needs an importance matrix"):
        parse_config({**base, "export": {"gguf": {"types": ["iq2_m"], "imatrix": "none"}}})
    with pytest.raises(ConfigError, match=r"tensor_types\.q4_0: 'q4_0' is not in export.gguf.types"):
        parse_config({**base, "export": {"gguf": {"types": ["q8_0"], "tensor_types": {"q4_0": "fit"}}}})
    with pytest.raises(ConfigError, match="'q7_k' is not one of"):
        parse_config(
            {**base, "export": {"gguf": {"types": ["q4_0"], "tensor_types": {"q4_0": {"attn_v": "q7_k"}}}}}
        )
    with pytest.raises(ConfigError, match="not a valid regular expression"):
        parse_config(
            {**base, "export": {"gguf": {"types": ["q4_0"], "tensor_types": {"q4_0": {"attn_(": "q8_0"}}}}}
        )
    cfg = parse_config(
        {**base, "export": {"gguf": {"types": ["iq2_m", "q4_k_m"], "tensor_types": {"q4_k_m": "fit"}}}}
    )
    assert cfg.export.gguf.imatrix == "auto"


def _train_and_merge(root: Path, model: str, types: list[str], **gguf) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    cfg = write_config(
        root / "edgeft.yaml",
        name="q",
        base_model=model,
        workdir="runs",
        dist_dir="dist",
        data={"train": str(EXAMPLE / "data" / "nl2sql.jsonl")},
        train={"max_steps": 4, "learning_rate": 0.003, "max_seq_length": 256},
        export={"gguf": {"types": types, **gguf}, "onnx": {"types": []}},
        verify={"max_prompts": 2, "max_new_tokens": 12, "edge_cases": False},
    )
    for command in (["train"], ["merge"], ["export", "gguf"]):
        result = CliRunner().invoke(cli, [*command, "-c", str(cfg)])
        assert result.exit_code == 0, result.output
    return cfg


@pytest.mark.slow
def test_new_types_are_calibrated_and_verified(tmp_path: Path, edgeft_cache: Path) -> None:
    """On the small model: `imatrix: auto` is computed on the rendered training split and recorded
    (manifest and every GGUF quantized with it); each new type passes verify within its own band."""
    from transformers import AutoTokenizer

    from edgeft.core.config import load_config
    from edgeft.data.rows import read_split
    from edgeft.models import gguf_meta
    from edgeft.pipeline.export import imatrix

    cfg = _train_and_merge(tmp_path, "tiny:small", ["f16", "q4_k_m", *NEW_TYPES])
    runs = tmp_path / "runs" / "q"
    export = json.loads((runs / "export-gguf" / "edgeft.json").read_text())
    matrix = export["importance_matrix"]
    assert matrix["source"] == "auto" and matrix["tokens"] >= 2 * matrix["context"]
    assert "llama-cpp-python==" in matrix["tool"]
    tokenizer = AutoTokenizer.from_pretrained(runs / "merge" / "model")
    config = load_config(cfg)
    budget = config.export.gguf.imatrix_tokens
    text = imatrix.render_training_text(
        runs / "train" / "train.jsonl", tokenizer, budget=budget, seed=config.data.seed
    )
    assert matrix["data_sha256"] == hashlib.sha256(text.encode()).hexdigest()
    assert len(read_split(runs / "train" / "train.jsonl")) > 300  # the whole split, sampled by row
    assert matrix["chunks"] * matrix["context"] <= budget  # export.gguf.imatrix_tokens bounds the cost
    assert (runs / "export-gguf" / matrix["file"]).is_file()
    for art in export["artifacts"]:
        meta, _ = gguf_meta.read(runs / "export-gguf" / art["path"])
        if formats.GGUF_TYPES[art["type"]].imatrix:
            assert art["importance_matrix"] == matrix["file"], art["name"]
            assert meta["edgeft.imatrix.sha256"] == matrix["sha256"], art["name"]
            assert meta["quantize.imatrix.chunks_count"] == matrix["chunks"], art["name"]
        else:
            assert art["importance_matrix"] is False and "edgeft.imatrix.sha256" not in meta, art["name"]

    result = CliRunner().invoke(cli, ["verify", "-c", str(cfg)])
    assert result.exit_code == 0, result.output
    report = json.loads((runs / "verify" / "report.json").read_text())
    for name, art in report["artifacts"].items():
        assert art["passed"], (name, art["numbers"])


@pytest.mark.slow
def test_fit_keeps_the_size_asked_for_where_widths_do_not_fit(tmp_path: Path, micro_model: Path) -> None:
    """The micro model's widths (64, 128) are not multiples of 256: llama.cpp stores q4_k_m's
    tensors as q5_0 and says so; `fit` stores them as iq4_nl (4.5 bits, blocks of 32) instead,
    and the importance matrix changes the bytes the quantizer writes."""
    from edgeft.pipeline.export import gguf

    _train_and_merge(tmp_path / "a", "tiny:micro", ["q4_k_m", "q4_0"], imatrix="none")
    _train_and_merge(tmp_path / "b", "tiny:micro", ["q4_k_m", "q4_0"], tensor_types={"q4_k_m": "fit"})
    plain = json.loads((tmp_path / "a" / "runs" / "q" / "export-gguf" / "edgeft.json").read_text())
    fitted = json.loads((tmp_path / "b" / "runs" / "q" / "export-gguf" / "edgeft.json").read_text())
    a = {x["type"]: x for x in plain["artifacts"]}
    b = {x["type"]: x for x in fitted["artifacts"]}
    assert a["q4_k_m"]["fallback_tensors"] > 0 and {f["used"] for f in a["q4_k_m"]["fallbacks"]} >= {"q5_0"}
    assert b["q4_k_m"]["fallback_tensors"] == 0 and "iq4_nl" in b["q4_k_m"]["tensor_types"].values()
    assert b["q4_k_m"]["bits_per_weight"] < a["q4_k_m"]["bits_per_weight"]
    assert "importance_matrix" not in plain and fitted["importance_matrix"]["source"] == "auto"
    # Same model and type, with and without the matrix: different bytes (the matrix is used).
    assert a["q4_0"]["sha256"] != b["q4_0"]["sha256"] or a["q4_0"]["metadata"] != b["q4_0"]["metadata"]
    assert gguf.FIT["q4_K"] == "iq4_nl"


def test_frontier_recommends_the_smallest_artifact_that_passes_both_gates(tmp_path: Path) -> None:
    from edgeft.core import formats
    from edgeft.core.manifest import Artifact
    from edgeft.pipeline.evaluate.results import EvalResults
    from edgeft.pipeline.verify.report import VerifyReport
    from edgeft.ship import frontier

    def art(name: str, type_: str, mb: float, passed: bool = True) -> Artifact:
        return Artifact.from_json(
            {
                "name": name,
                "path": f"{name}.gguf",
                "format": "gguf",
                "type": type_,
                "bytes": int(mb * 1e6),
                "bits_per_weight": None,
                "parameters": 135_000_000,
                "verify": {"passed": passed},
            }
        )

    artifacts = [
        art("gguf-q8_0", "q8_0", 145),
        art("gguf-q2_k", "q2_k", 60, passed=False),
        art("gguf-iq4_xs", "iq4_xs", 91),
        art("gguf-q4_k_m", "q4_k_m", 105),
    ]
    artifacts[3].info["tensor_types"] = {"token_embd": "iq4_nl"}  # drawn with the band verify held it to
    report = {
        "artifacts": {
            a.name: {"numbers": {"kl_mean": kl, "kl_p99": 10 * kl, "top1": 0.9}}
            for a, kl in zip(artifacts, [0.01, 1.2, 0.1, 0.12], strict=True)
        }
    }
    models = {
        a.name: {
            "scores": {"exact_match": 1.0},
            "passed": True,
            "speed": {"prompt_tokens_per_s": 500.0, "generation_tokens_per_s": 50.0},
        }
        for a in artifacts
    }
    models["gguf-iq4_xs"]["passed"] = False  # smaller than q4_k_m, but its answers regressed
    results = EvalResults.from_json(
        {
            "examples": 40,
            "min_relative": 0.95,
            "models": {"fine-tuned": {"scores": {"exact_match": 1.0}}, **models},
        }
    )
    summary = frontier.write(tmp_path, artifacts, VerifyReport.from_json(report), results)
    assert summary["recommended"] == "gguf-q4_k_m"
    assert [r["name"] for r in summary["rows"]] == ["gguf-q2_k", "gguf-iq4_xs", "gguf-q4_k_m", "gguf-q8_0"]
    assert summary["rows"][0]["bits_per_weight"] == pytest.approx(8 * 60e6 / 135e6, abs=0.01)
    assert summary["rows"][2]["band_kl_mean"] == formats.band("gguf", "iq4_nl").kl_mean
    md = (tmp_path / "frontier.md").read_text()
    assert "**Recommended: `gguf-q4_k_m`**" in md and "eval FAIL" in md and "verify FAIL" in md
    assert (tmp_path / "frontier.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
