"""A byte-level BPE tokenizer llama.cpp does not know by hash: converted when one of the
pre-tokenizers llama.cpp implements tokenises exactly like it, refused with a clear message when
none does."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import EXAMPLE, write_config

from edgeft.cli import cli
from edgeft.core.manifest import StageWriter

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def bpe_model(edgeft_cache: Path) -> Path:
    from edgeft.models.tiny import cached_tiny_model

    return cached_tiny_model("micro-bpe", 0)


def test_bpe_variant_builds_and_verifies(tmp_path: Path, bpe_model: Path) -> None:
    cfg = write_config(
        tmp_path / "edgeft.yaml",
        name="bpe",
        base_model="tiny:micro-bpe",
        workdir="runs",
        dist_dir="dist",
        data={"train": str(EXAMPLE / "data" / "nl2sql.jsonl")},
        train={"max_steps": 20, "learning_rate": 0.003, "max_seq_length": 256},
        export={"gguf": {"types": ["f16", "q8_0"]}, "onnx": {"types": []}},
        verify={"max_prompts": 3, "max_new_tokens": 16},
    )
    result = CliRunner().invoke(cli, ["build", "-c", str(cfg)])
    assert result.exit_code == 0, result.output
    assert "its 'gpt-2' gives the same ids on all" in result.stderr
    report = json.loads((tmp_path / "dist" / "bpe" / "verify" / "report.json").read_text())
    assert report["passed"]
    for name in ("gguf-f16", "gguf-q8_0"):
        assert report["artifacts"][name]["checks"]["tokens_chat"]["passed"]
        assert report["artifacts"][name]["checks"]["chat_template"]["passed"]


# Pre-tokenizers as they appear in published tokenizer.json files, and the name edgeft must pick
# for each: the first of pretok.PREFERRED that tokenises the same (later names may agree too; on a
# small vocabulary with few merges even earlier ones can, which is why the real one is used too).
LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_CASED = r"[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]"
_LOWER = r"[\p{Ll}\p{Lm}\p{Lo}\p{M}]"
_CONTRACTION = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
GPT4O_SPLIT = (
    rf"[^\r\n\p{{L}}\p{{N}}]?{_CASED}*{_LOWER}+{_CONTRACTION}|[^\r\n\p{{L}}\p{{N}}]?{_CASED}+{_LOWER}*"
    rf"{_CONTRACTION}|\p{{N}}{{1,3}}| ?[^\s\p{{L}}\p{{N}}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
PUBLISHED = {
    "llama-3": (
        {
            "type": "Sequence",
            "pretokenizers": [
                {
                    "type": "Split",
                    "pattern": {"Regex": LLAMA3_SPLIT},
                    "behavior": "Isolated",
                    "invert": False,
                },
                {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False},
            ],
        },
        "llama-bpe",
    ),
    # o200k's pattern (tiktoken), as Split + ByteLevel without its own regex
    "gpt-4o": (
        {
            "type": "Sequence",
            "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": GPT4O_SPLIT}, "behavior": "Isolated", "invert": False},
                {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False},
            ],
        },
        "gpt-4o",
    ),
}


def _merge_stage_with(tmp_path: Path, bpe_model: Path, pre_tokenizer: dict) -> Path:
    merge_dir = tmp_path / "merge"
    with StageWriter(merge_dir, "merge") as w:
        shutil.copytree(bpe_model, w.tmp / "model")
        tj_path = w.tmp / "model" / "tokenizer.json"
        tj = json.loads(tj_path.read_text())
        tj["pre_tokenizer"] = pre_tokenizer
        tj_path.write_text(json.dumps(tj))
        w.add_artifact("model", "model", "hf-safetensors")
        w.publish()
    return merge_dir


def _export(tmp_path: Path, merge_dir: Path):  # type: ignore[no-untyped-def]
    cfg = write_config(
        tmp_path / "edgeft.yaml",
        name="x",
        base_model="tiny:micro-bpe",
        data={"train": str(EXAMPLE / "data" / "nl2sql.jsonl")},
        export={"gguf": {"types": ["f16"]}, "onnx": {"types": []}},
    )
    return CliRunner().invoke(
        cli,
        ["export", "gguf", "-c", str(cfg), "--merge-dir", str(merge_dir), "--out", str(tmp_path / "gguf")],
    )


def test_a_published_pre_tokenizer_on_a_new_vocabulary_converts(tmp_path: Path, bpe_model: Path) -> None:
    """Llama 3's pre-tokenizer on the tiny model's vocabulary: converted, and the GGUF then
    tokenises as transformers does, on texts outside the stress corpus too."""
    import gguf
    from tokenizers import Tokenizer

    from edgeft.models.pretok import stress_corpus
    from edgeft.runtimes.llamacpp import LlamaCppRuntime

    pre_tokenizer, name = PUBLISHED["llama-3"]
    merge_dir = _merge_stage_with(tmp_path, bpe_model, pre_tokenizer)
    result = _export(tmp_path, merge_dir)
    assert result.exit_code == 0, result.output
    path = tmp_path / "gguf" / "x-f16.gguf"
    assert gguf.GGUFReader(path).fields["tokenizer.ggml.pre"].contents() == name
    assert f"its {name!r} gives the same ids" in result.stderr
    hf = Tokenizer.from_file(str(merge_dir / "model" / "tokenizer.json"))
    others = [
        "Wie viele Einträge hat 'Café'?  12345 rows\n\n\tSELECT x FROM t WHERE y >= 1000;",
        "They'll say it's 3,141,592 — ok? 🚀🚀",
    ]
    with LlamaCppRuntime(path, all_logits=False) as rt:
        for text in [*stress_corpus(n=50, seed=1), *others]:
            assert rt.tokenize(text, add_special=False) == hf.encode(text, add_special_tokens=False).ids, text


def test_unknown_pre_tokenizer_is_refused_by_name(tmp_path: Path, bpe_model: Path) -> None:
    pre_tokenizer = json.loads((bpe_model / "tokenizer.json").read_text())["pre_tokenizer"]
    pre_tokenizer["add_prefix_space"] = True  # no pre-tokenizer llama.cpp implements adds a space
    merge_dir = _merge_stage_with(tmp_path, bpe_model, pre_tokenizer)
    result = _export(tmp_path, merge_dir)
    assert result.exit_code == 6, result.output
    message = result.stderr.strip().splitlines()[-1]
    assert message.startswith(
        f"Error: {merge_dir / 'model' / 'tokenizer.json'}: llama.cpp does not recognise "
        "this BPE pre-tokenizer (hash "
    )
    assert (
        "it implements tokenises like it (nearest: " in message and "convert_hf_to_gguf_update.py" in message
    )
    assert not (tmp_path / "gguf").exists()


@pytest.mark.parametrize("family", ["smollm2", *PUBLISHED])
def test_pre_tokenizers_are_told_apart_on_a_real_vocabulary(
    smollm2: Path, tmp_path: Path, family: str
) -> None:
    """SmolLM2's 49k vocabulary under its own pre-tokenizer and under Llama 3's and GPT-4o's: each
    is found by tokenising, although the names tried before it (GPT-2's first) share most of its
    splits — on this vocabulary they differ on contractions, case runs and non-ASCII numerics."""
    from edgeft.pipeline.export.gguf import _pre_tokenizer_by_behaviour, _stage_for_conversion

    staged = _stage_for_conversion(smollm2, tmp_path)
    name = "smollm"
    if family in PUBLISHED:
        pre_tokenizer, name = PUBLISHED[family]
        tj = json.loads((staged / "tokenizer.json").read_text())
        tj["pre_tokenizer"] = pre_tokenizer
        (staged / "tokenizer.json").unlink()  # a link into the cached model
        (staged / "tokenizer.json").write_text(json.dumps(tj))
    assert _pre_tokenizer_by_behaviour(staged, tmp_path, smollm2, "") == name
