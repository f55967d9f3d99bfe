"""Export the merged model to GGUF with llama.cpp's own converter and quantizer.

Consumes a `merge` stage; produces an `export-gguf` stage with one `<name>-<type>.gguf` per
configured type. The HF model is converted once to f32 by the vendored `convert_hf_to_gguf.py`
(the same llama.cpp version llama-cpp-python was built from), then each type is made from that
with llama.cpp's llama-quantize (built at set-up against the same wheel), weighted by an importance
matrix computed on the training data (export.gguf.imatrix, see imatrix.py), with per-tensor types
where the config asks (export.gguf.tensor_types). Per file the manifest records size, bits per
weight, the matrix and the tensors llama.cpp had to give another type (it reports success either way).

    edgeft export gguf -c examples/nl2sql/edgeft.yaml
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from edgeft.core import formats, stages
from edgeft.core.config import Config
from edgeft.core.errors import InputError, ToolError, says_no_space
from edgeft.core.fileio import hash_json, sha256_file
from edgeft.core.manifest import Stage
from edgeft.core.paths import vendor_dir
from edgeft.core.workdir import die_with_parent, in_session
from edgeft.models import gguf_meta, llama_tools, pretok
from edgeft.models.base import plain_template
from edgeft.pipeline.export import imatrix, open_export

log = logging.getLogger(__name__)


# The metadata each artifact's manifest entry repeats (all of it is checked).
META_SUMMARY = (
    "general.name",
    "general.finetune",
    "general.base_model.0.name",
    "general.license",
    "tokenizer.ggml.bos_token_id",
    "tokenizer.ggml.eos_token_id",
    "tokenizer.ggml.eot_token_id",
)

_FALLBACK = re.compile(
    r"warning:\s+(?P<tensor>\S+)\s+-\s+ncols\s+(?P<ncols>\d+)\s+not divisible by\s+(?P<block>\d+)"
    r"\s+\(required for type\s+(?P<wanted>\S+)\).*?falling back to\s+(?P<used>\S+)"
)


TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer.model",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "added_tokens.json",
)


class _UnknownPreTokenizer(Exception):
    """The converter refused a BPE pre-tokenizer it does not know by hash."""


def _stage_for_conversion(
    model_dir: Path, work: Path, license: str | None = None, tokenizer_dir: Path | None = None
) -> Path:
    """A view of the model whose chat template plain Jinja can render.

    `tokenizer_dir` supplies the tokenizer and template instead of `model_dir`'s: the base
    GGUF that a LoRA GGUF is applied to must carry the fine-tune's template, not the base's.
    """
    tokenizer_dir = tokenizer_dir or model_dir
    staged = work / "hf"
    staged.mkdir()
    for f in model_dir.iterdir():
        if f.name not in (*TOKENIZER_FILES, "README.md"):
            (staged / f.name).symlink_to(f.resolve())
    for name in TOKENIZER_FILES:
        if (tokenizer_dir / name).is_file() and name not in ("tokenizer_config.json", "chat_template.jinja"):
            (staged / name).symlink_to((tokenizer_dir / name).resolve())
    card = gguf_meta.model_card_front_matter(license)
    if card:
        (staged / "README.md").write_text(card)
    tc = json.loads((tokenizer_dir / "tokenizer_config.json").read_text())
    if "chat_template" in tc and isinstance(tc["chat_template"], str):
        tc["chat_template"] = plain_template(tc["chat_template"])
    (staged / "tokenizer_config.json").write_text(json.dumps(tc, indent=2))
    jinja = tokenizer_dir / "chat_template.jinja"
    if jinja.exists():
        (staged / "chat_template.jinja").write_text(plain_template(jinja.read_text()))
    return staged


_UNRECOGNISED_PRE = "BPE pre-tokenizer was not recognized"


def _converter(
    script_name: str,
    args: list[str],
    what: Path,
    pre: str | None = None,
    eot: int | None = None,
    add_bos: bool | None = None,
) -> None:
    """Run one of llama.cpp's converter scripts from vendor/; a failure is a ToolError.

    convert_hf_to_gguf.py runs through edgeft.pipeline.export._convert, which can also set the BPE
    pre-tokenizer and the end-of-turn token id (see there).
    """
    script = vendor_dir() / script_name
    if not script.is_file():
        raise InputError(
            f"{script}: llama.cpp's converter is missing; run scripts/setup.sh "
            f"(it unpacks it from the pinned llama-cpp-python source package)"
        )
    env = {**os.environ, "NO_LOCAL_GGUF": "1"}
    cmd = [sys.executable, str(script), *args]
    if script_name == "convert_hf_to_gguf.py":
        cmd = [
            sys.executable,
            "-m",
            "edgeft.pipeline.export._convert",
            str(vendor_dir()),
            pre or "-",
            "-" if eot is None else str(eot),
            "-" if add_bos is None else str(int(add_bos)),
            *args,
        ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, preexec_fn=die_with_parent)
    if proc.returncode != 0 and _UNRECOGNISED_PRE in proc.stderr and pre is None:
        raise _UnknownPreTokenizer(proc.stderr)
    if proc.returncode != 0:
        lines = (proc.stderr or proc.stdout).strip().splitlines()
        # The converter logs at INFO; its ERROR lines (or the traceback's end) say what failed; a
        # full disk is named wherever it is (the stage then reports it as such, exit 10).
        detail = (
            [line for line in lines if says_no_space(line)][-1:]
            or [line for line in lines if line.startswith("ERROR")][-3:]
            or lines[-6:]
        )
        raise ToolError(f"{script_name} failed on {what} (exit {proc.returncode}):\n" + "\n".join(detail))


def convert_hf(
    model_dir: Path,
    outfile: Path,
    name: str,
    outtype: str = "f32",
    metadata: dict[str, Any] | None = None,
    license: str | None = None,
    tokenizer_dir: Path | None = None,
    eot: int | None = None,
) -> None:
    """llama.cpp's HF → GGUF converter on a model directory."""
    with tempfile.TemporaryDirectory() as work:
        staged = _stage_for_conversion(Path(model_dir), Path(work), license, tokenizer_dir)
        args = [str(staged), "--outfile", str(outfile), "--outtype", outtype, "--model-name", name]
        if metadata:
            (Path(work) / "metadata.json").write_text(json.dumps(metadata))
            args += ["--metadata", str(Path(work) / "metadata.json")]
        _convert_staged(
            staged,
            Path(work),
            args,
            Path(model_dir),
            Path(tokenizer_dir or model_dir),
            eot=eot,
            add_bos=_adds_bos(staged),
        )


def convert_vocab_only(model_dir: Path, outfile: Path) -> None:
    """The converter's vocabulary-only GGUF of a model directory (seconds): the architecture,
    hyperparameters and tokenizer as llama.cpp will read them, no weights (edgeft.cli.preflight)."""
    with tempfile.TemporaryDirectory() as work:
        staged = _stage_for_conversion(Path(model_dir), Path(work))
        _convert_staged(
            staged,
            Path(work),
            [str(staged), "--outfile", str(outfile), "--vocab-only"],
            Path(model_dir),
            Path(model_dir),
        )


def _convert_staged(
    staged: Path, work: Path, args: list[str], model_dir: Path, source: Path, **options: Any
) -> None:
    """convert_hf_to_gguf.py on a staged model; where it does not know the BPE pre-tokenizer by its
    hash, again with the one edgeft finds by tokenising (`source`: where the tokenizer came from)."""
    try:
        _converter("convert_hf_to_gguf.py", args, model_dir, **options)
    except _UnknownPreTokenizer as e:
        pre = _pre_tokenizer_by_behaviour(staged, work, source, str(e))
        _converter("convert_hf_to_gguf.py", args, model_dir, pre=pre, **options)


def _adds_bos(model_dir: Path) -> bool | None:
    """Whether transformers' tokenizer in `model_dir` puts BOS before a text (None: no tokenizer)."""
    from transformers import AutoTokenizer

    from edgeft.runtimes import bos_before

    try:
        tok = AutoTokenizer.from_pretrained(model_dir)
    except (OSError, ValueError):
        return None
    first = bos_before(
        tok("a", add_special_tokens=True)["input_ids"], tok("a", add_special_tokens=False)["input_ids"]
    )
    return first is not None and first == tok.bos_token_id


def _pre_tokenizer_by_behaviour(staged: Path, work: Path, source: Path, refusal: str) -> str:
    """llama.cpp's name for the staged model's BPE pre-tokenizer, found by tokenising (see
    edgeft.models.pretok) after the converter refused its hash; a ToolError when none agrees."""
    names = pretok.converter_pre_tokenizers(vendor_dir())
    vocab = work / "vocab-only.gguf"
    _converter(
        "convert_hf_to_gguf.py", [str(staged), "--outfile", str(vocab), "--vocab-only"], source, pre=names[0]
    )
    log.info(
        "llama.cpp does not know this BPE pre-tokenizer by its hash; trying the %d it implements", len(names)
    )
    found = pretok.match(staged / "tokenizer.json", vocab, names)
    if found.name is None:
        hsh = re.search(r"chkhsh:\s+([0-9a-f]+)", refusal)
        raise ToolError(
            f"{source / 'tokenizer.json'}: llama.cpp does not recognise this BPE pre-tokenizer (hash "
            f"{hsh.group(1) if hsh else '?'}) and none of the {found.tried} it implements tokenises like it "
            f"(nearest: {found.nearest!r}, same ids on {found.nearest_agrees} of {found.texts} stress texts, "
            f"first different on {found.first_difference!r}); add the model to llama.cpp's "
            f"convert_hf_to_gguf_update.py, or fine-tune a base whose tokenizer llama.cpp supports"
        )
    log.info(
        "BPE pre-tokenizer unknown to llama.cpp by hash; its %r gives the same ids on all %d stress texts",
        found.name,
        found.texts,
    )
    return found.name


def convert_lora(adapter_dir: Path, outfile: Path, base_dir: Path, outtype: str = "f16") -> None:
    """llama.cpp's PEFT LoRA → GGUF converter (the base directory gives the tensor layout)."""
    _converter(
        "convert_lora_to_gguf.py",
        ["--outfile", str(outfile), "--outtype", outtype, "--base", str(base_dir), str(adapter_dir)],
        Path(adapter_dir),
    )


# "fit": the 32-block type of the same size for a tensor whose width a K-quant cannot take
# (llama.cpp's own fallback is one size up: q4_K → q5_0, q5_K → q5_1).
FIT = {
    "q2_K": "iq4_nl",
    "q3_K": "iq4_nl",
    "q4_K": "iq4_nl",
    "iq4_xs": "iq4_nl",
    "q5_K": "q5_0",
    "q6_K": "q8_0",
    "iq3_s": "iq4_nl",
    "iq3_xxs": "iq4_nl",
    "iq2_s": "iq4_nl",
    "iq2_xs": "iq4_nl",
    "iq2_xxs": "iq4_nl",
}


def _fallbacks(output: str) -> list[dict[str, Any]]:
    return [
        {
            "tensor": m["tensor"],
            "ncols": int(m["ncols"]),
            "block": int(m["block"]),
            "wanted": m["wanted"],
            "used": m["used"],
        }
        for m in _FALLBACK.finditer(output)
    ]


def quantize(
    src: Path,
    dst: Path,
    gguf_type: str,
    *,
    imatrix: Path | None = None,
    tensor_types: dict[str, str] | None = None,
    kv: Sequence[str] = (),
    dry_run: bool = False,
) -> list[dict[str, Any]]:
    """llama-quantize src → dst; return the tensors that fell back to another type (llama.cpp
    reports success either way)."""
    args: list[Any] = []
    if imatrix is not None:
        args += ["--imatrix", imatrix]
    for pattern, ggml in (tensor_types or {}).items():
        args += ["--tensor-type", f"{pattern}={ggml}"]
    for item in kv:
        args += ["--override-kv", item]
    if dry_run:
        args += ["--dry-run", src, formats.GGUF_TYPES[gguf_type].quantize_name]
    else:
        args += [src, dst, formats.GGUF_TYPES[gguf_type].quantize_name]
    output = llama_tools.run("llama-quantize", args, f"{src.name} → {gguf_type}", writes=dst.parent)
    if not dry_run and not dst.is_file():
        raise ToolError(f"llama-quantize {src.name} → {gguf_type} wrote no file:\n{output[-1000:]}")
    return _fallbacks(output)


def fitted_types(
    src: Path, gguf_type: str, spec: dict[str, str] | str | None, imatrix: Path | None
) -> dict[str, str]:
    """The --tensor-type overrides for `gguf_type`: the config's mapping, or for "fit" one per
    tensor llama.cpp would fall back on (found by a dry run), at the same size."""
    if not spec:
        return {}
    if isinstance(spec, dict):
        return dict(spec)
    by_type: dict[str, list[str]] = {}
    for f in quantize(src, src, gguf_type, imatrix=imatrix, dry_run=True):
        if f["wanted"] in FIT:
            by_type.setdefault(FIT[f["wanted"]], []).append(re.escape(f["tensor"]))
    # One alternation per type: llama-quantize tries every pattern on every tensor (std::regex, slow).
    return {f"^({'|'.join(names)})$": ggml for ggml, names in by_type.items()}


def inputs_hash(cfg: Config, upstream: Sequence[Stage]) -> str:
    """The merged model's inputs, the GGUF section, what goes into the files' metadata, the files
    the importance matrix is made from and the llama.cpp tools that quantize."""
    (merged,) = upstream
    g = cfg.export.gguf
    files = [
        cfg.path(p) for p in (g.imatrix_text, g.imatrix if g.imatrix not in ("auto", "none") else None) if p
    ]
    return hash_json(
        [
            merged.inputs_hash,
            cfg.section("export")["gguf"],
            cfg.name,
            cfg.base_model,
            cfg.license,
            [sha256_file(f) if f.is_file() else str(f) for f in files],
            llama_tools.version(),
        ]
    )


def convert_with_metadata(
    model_dir: Path,
    out: Path,
    cfg: Config,
    want: dict[str, Any],
    outtype: str,
    tokenizer_dir: Path | None = None,
) -> None:
    """Convert with edgeft's metadata and the end-of-turn token id."""
    convert_hf(
        model_dir,
        out,
        cfg.name,
        outtype=outtype,
        metadata=gguf_meta.override(cfg.name, cfg.base_model),
        license=cfg.license,
        tokenizer_dir=tokenizer_dir,
        eot=want.get("tokenizer.ggml.eot_token_id"),
    )


def _checked_metadata(path: Path, want: dict[str, Any], digest: bool = False) -> dict[str, Any]:
    """The file's metadata summary and size figures, after checking every expected value
    (and its sha256 for the manifest when `digest`)."""
    meta, summary = gguf_meta.read(path)
    problems = gguf_meta.check(meta, want)
    if problems:
        raise ToolError(f"{path.name}: wrong metadata after conversion: " + "; ".join(problems))
    extra = {"sha256": sha256_file(path)} if digest else {}
    return {"metadata": {k: meta.get(k) for k in META_SUMMARY}, **summary, **extra}


def export_lora(cfg: Config, merged: Stage, folder: Path, want: dict[str, Any]) -> None:
    """The adapter as its own GGUF plus the f16 base GGUF it applies to, in `folder`."""
    adapter_dir = merged.artifact_path("adapter")
    base_dir = Path(merged.resolved_base or "")  # a local directory: resolve_base fetched a hub id
    folder.mkdir()
    log.info("converting the LoRA adapter and its f16 base to GGUF")
    # The base carries the fine-tune's tokenizer and template: it is only used with the adapter.
    convert_with_metadata(base_dir, folder / f"{cfg.name}-base-f16.gguf", cfg, want, "f16", adapter_dir)
    convert_lora(adapter_dir, folder / f"{cfg.name}-adapter-f16.gguf", base_dir)


def _prompt_format(tokenizer: Any) -> dict[str, Any]:
    """The chat template as plain pieces (edgeft.models.prompt_format) for consumers without Jinja, or why
    there are none; verify checks the pieces against the reference's rendering."""
    from edgeft.models.prompt_format import from_tokenizer

    if not tokenizer.chat_template:
        return {"prompt_format": None, "prompt_format_note": "no chat template"}
    fmt, why = from_tokenizer(tokenizer)
    if fmt is None:
        log.warning(
            "the chat template cannot be written as fixed pieces (%s): the Java kit falls back to "
            "llama.cpp's built-in template matcher",
            why,
        )
    return {"prompt_format": fmt, "prompt_format_note": why}


def _train_split(merged: Stage) -> Path | None:
    """The training split the merged model was trained on (for imatrix: auto), if it is still there."""
    try:
        return merged.ancestor(stages.TRAIN).artifact_path("train-split")
    except InputError:
        return None


def _report_fallbacks(gguf_type: str, fallbacks: list[dict[str, Any]]) -> None:
    """Say what the user got instead of what they asked for when llama.cpp fell back."""
    if not fallbacks:
        return
    pairs = sorted({(f["wanted"], f["used"], f["ncols"], f["block"]) for f in fallbacks})
    what = "; ".join(f"{w} → {u} (width {n} is not a multiple of {b})" for w, u, n, b in pairs)
    log.warning(
        "%s: %d tensors could not take the type's blocks and were stored larger: %s. The file's bits "
        "per weight are in the manifest; export.gguf.tensor_types: {%s: fit} stores them at the same "
        "size instead",
        gguf_type,
        len(fallbacks),
        what,
        gguf_type,
    )


@in_session
def export_gguf(
    cfg: Config,
    merge_dir: Path | None = None,
    out_dir: Path | None = None,
    *,
    force: bool = False,
    replace_own: bool = False,
) -> Stage:
    """Convert and quantize the merged model to every configured GGUF type (and the LoRA GGUF)."""
    from transformers import AutoTokenizer

    merged, model_dir, writer = open_export(
        cfg, stages.EXPORT_GGUF, merge_dir, out_dir, force, inputs_hash, replace_own
    )
    types = list(dict.fromkeys(cfg.export.gguf.types))
    want = gguf_meta.expected(model_dir, cfg.name, cfg.base_model, cfg.license, merged.end_of_turn)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    prompt = _prompt_format(tokenizer)
    with writer as w:
        f32 = w.tmp / f"{cfg.name}-f32.gguf"
        log.info("converting %s to GGUF with llama.cpp's converter", model_dir)
        convert_with_metadata(model_dir, f32, cfg, want, "f32")
        matrix = imatrix.make(cfg, f32, _train_split(merged), tokenizer, w.tmp)
        if matrix is not None:  # lineage, not a model: recorded beside the artifacts, checked when packaged
            w.extra["importance_matrix"] = matrix
        # Reading a file back and hashing it overlap the next quantization: the checks then cost
        # little extra time.
        with ThreadPoolExecutor(max_workers=1) as pool:
            done = []
            for t in types:
                out = w.tmp / f"{cfg.name}-{t}.gguf"
                fallbacks, overrides, used = [], {}, None
                if t != "f32":
                    if matrix is not None and formats.GGUF_TYPES[t].imatrix:
                        used = w.tmp / matrix["file"]
                    overrides = fitted_types(f32, t, cfg.export.gguf.tensor_types.get(t), used)
                    log.info(
                        "quantizing to %s%s%s",
                        t,
                        " with the importance matrix" if used else "",
                        f" ({len(overrides)} tensor type overrides)" if overrides else "",
                    )
                    fallbacks = quantize(
                        f32,
                        out,
                        t,
                        imatrix=used,
                        tensor_types=overrides,
                        kv=imatrix.metadata_overrides(matrix) if used and matrix else (),
                    )
                    _report_fallbacks(t, fallbacks)
                done.append(
                    (t, out, fallbacks, overrides, used, pool.submit(_checked_metadata, out, want, True))
                )
            for t, out, fallbacks, overrides, used, checked in done:
                w.add_artifact(
                    f"gguf-{t}",
                    out.name,
                    formats.GGUF,
                    type=t,
                    runtime="llama.cpp",
                    fallback_tensors=len(fallbacks),
                    fallbacks=fallbacks,
                    tensor_types=overrides,
                    importance_matrix=matrix["file"] if used and matrix else False,
                    **prompt,
                    **checked.result(),
                )
        if "f32" not in types:
            f32.unlink()
        if cfg.export.gguf.lora:
            export_lora(cfg, merged, w.tmp / "lora", want)
            base_file = f"{cfg.name}-base-f16.gguf"
            w.add_artifact(
                "gguf-lora",
                "lora",
                formats.GGUF_LORA,
                type="f16",
                runtime="llama.cpp",
                base_file=base_file,
                adapter_file=f"{cfg.name}-adapter-f16.gguf",
                **prompt,
                **_checked_metadata(w.tmp / "lora" / base_file, want),
            )
        stage = w.publish()
    log.info("GGUF files written to %s", stage.path)
    return stage
