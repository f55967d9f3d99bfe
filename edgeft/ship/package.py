"""Assemble `dist/<name>/`: what a deploying team ships, with checksums and lineage.

Consumes the merge (carrying what training made), export, verify and eval stages; produces
`dist/<name>/` with `gguf/`, `onnx/<type>/`, `verify/report.{json,md}`, `eval/results.{json,md}`,
`java/` (the JNA kit for the GGUF files, see edgeft/ship/javakit), `README.md` (the model card) and
`manifest.json` (every file with bytes and sha256, the resolved config, versions of edgeft and of
the pinned stack, lineage: base model, dataset hash, adapter, training metrics, and the verify result).

    edgeft package -c examples/nl2sql/edgeft.yaml
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import platform
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from edgeft import __version__
from edgeft.core import formats, stages
from edgeft.core.config import Config
from edgeft.core.errors import InputError
from edgeft.core.fileio import copy_file, file_table, hash_json, inside
from edgeft.core.manifest import Artifact, Stage, StageWriter
from edgeft.core.paths import vendor_dir
from edgeft.core.workdir import in_session
from edgeft.pipeline.evaluate import gate_rule, preference_lines, verdict_lines
from edgeft.pipeline.evaluate.results import METRIC_NAMES, OPTIONAL_BINARY, EvalResults
from edgeft.pipeline.verify.report import Verdict, VerifyReport
from edgeft.ship import frontier

log = logging.getLogger(__name__)

# The pinned stack whose versions every dist records (DESIGN.md).
STACK = (
    "torch",
    "transformers",
    "tokenizers",
    "peft",
    "trl",
    "accelerate",
    "datasets",
    "bitsandbytes",
    "sentencepiece",
    "onnx",
    "onnxruntime",
    "optimum",
    "optimum-onnx",
    "llama-cpp-python",
    "gguf",
)


# What a dist manifest repeats from each export artifact's entry (tensor_types: verify of the dist
# holds the file to the band of what it stores).
CARRIED = (
    "bits_per_weight",
    "parameters",
    "fallback_tensors",
    "tensor_types",
    "importance_matrix",
    "metadata",
    "base_file",
    "adapter_file",
    "model_file",
    "opset",
    "inputs",
    "outputs",
    "prompt_format",
    "prompt_format_note",
    "recipe",
    "quantized_matmuls",
    "float_matmuls",
)


def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"edgeft": __version__, "python": platform.python_version()}
    for name in STACK:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    source = vendor_dir() / "SOURCE"
    # The converter's provenance: the llama-cpp-python source package it was unpacked from.
    out["llama.cpp converter"] = source.read_text().split("\n")[1] if source.is_file() else None
    from edgeft.models import llama_tools

    out["llama.cpp tools"] = llama_tools.version() if llama_tools.source() else None
    return out


def _place_verified(stage: Stage, art: Artifact, dst: Path, seen: Verdict | None) -> None:
    """Copy an artifact (file or folder) into the dist, checking every byte against the
    checksums verify recorded when it passed (`seen`): bytes verify never saw are not shipped."""
    src = stage.file(art.path)
    if art.files is not None:
        table = {f["path"]: f["sha256"] for f in (seen.files if seen else None) or []}
        pairs = [(inside(src, f["path"]), dst / f["path"], table.get(f["path"])) for f in art.files]
        extra = sorted(
            p.relative_to(src).as_posix()
            for p in src.rglob("*")
            if p.is_file() and p.relative_to(src).as_posix() not in table
        )
        if extra:
            raise InputError(
                f"{src / extra[0]}: not among the files verify checked; re-run `edgeft verify` "
                f"(or `edgeft build`)"
            )
    else:
        pairs = [(src, dst, seen.sha256 if seen else None)]
    for source, target, want in pairs:
        got = copy_file(source, target)
        if got != want:
            raise InputError(
                f"{source}: its bytes are not the ones verify checked (sha256 {got[:12]}…, verified "
                f"{str(want)[:12]}…): it changed after verification; re-run `edgeft verify` (or "
                f"`edgeft build`) before packaging"
            )


def _place(src: Path, dst: Path) -> None:
    """Copy a file or folder of edgeft's own reports into the dist."""
    for f in sorted(src.rglob("*")) if src.is_dir() else [src]:
        if f.is_file():
            copy_file(f, dst / f.relative_to(src) if src.is_dir() else dst)


def _place_matrix(exports: Sequence[Stage], folder: Path) -> dict[str, Any] | None:
    """The importance matrix the GGUF files were quantized with, copied beside them after its
    checksum is checked; its lineage record (None: no matrix)."""
    for stage in exports:
        matrix = stage.data.get("importance_matrix")
        if matrix:
            got = copy_file(stage.file(matrix["file"]), folder / matrix["file"])
            if got != matrix["sha256"]:
                raise InputError(
                    f"{stage.file(matrix['file'])}: changed since it was made (sha256 {got[:12]}, "
                    f"recorded {matrix['sha256'][:12]}); re-run edgeft export gguf"
                )
            return matrix
    return None


def inputs_hash(cfg: Config, upstream: Sequence[Stage]) -> str:
    """What the dist is made of: the merge, export, verify and eval stages' inputs."""
    return hash_json([s.inputs_hash for s in upstream])


def _judged(
    cfg: Config, merge: Stage, exports: list[Stage]
) -> tuple[Stage, VerifyReport, Stage, EvalResults]:
    """The verify and eval stages, refused unless both passed on exactly these export stages."""
    from edgeft.pipeline import evaluate as eval_mod
    from edgeft.pipeline import verify as verify_mod

    verify = stages.load(cfg, stages.VERIFY)
    if not verify.metrics.get("passed"):
        raise InputError(
            f"{verify.path}: verification did not pass; fix the failures in "
            f"{verify.file('report.md')} before packaging"
        )
    again = f"re-run `edgeft verify -c {cfg.source or 'CONFIG'}` (or `edgeft build`)"
    if verify.inputs_hash != verify_mod.inputs_hash(cfg, [merge, *exports]):
        raise InputError(
            f"{verify.path}: this report is for other artifacts or settings than the export stages "
            f"now hold: {again}"
        )
    evaluated = stages.load(cfg, stages.EVAL)
    if not evaluated.metrics.get("passed"):
        raise InputError(
            f"{evaluated.path}: evaluation failed its regression gate; see {evaluated.file('results.md')}"
        )
    if evaluated.inputs_hash != eval_mod.inputs_hash(cfg, [merge, *exports]):
        raise InputError(
            f"{evaluated.path}: these results are for other artifacts or settings than the export "
            f"stages now hold: re-run `edgeft eval -c {cfg.source or 'CONFIG'}` (or `edgeft build`)"
        )
    return (
        verify,
        VerifyReport.read(verify.file("report.json")),
        evaluated,
        EvalResults.read(evaluated.file("results.json")),
    )


def _place_artifacts(w: StageWriter, exports: list[Stage], report: VerifyReport) -> list[Artifact]:
    """Every exported artifact into gguf/ or onnx/, each byte checked against what verify judged."""
    artifacts: list[Artifact] = []
    for stage in exports:
        sub = "gguf" if stage.kind == stages.EXPORT_GGUF else "onnx"
        for a in stage.artifacts:
            rel = f"{sub}/{Path(a.path).name}"
            seen = report.verdict(a.name)
            _place_verified(stage, a, w.tmp / rel, seen)
            artifacts.append(
                w.add_artifact(
                    a.name,
                    rel,
                    a.format,
                    type=a.type,
                    runtime=a.runtime,
                    verify=seen.summary() if seen else {"passed": None},
                    **{k: a.info[k] for k in CARRIED if k in a.info},
                )
            )
    return artifacts


def _write_consumers(
    w: StageWriter,
    cfg: Config,
    artifacts: list[Artifact],
    report: VerifyReport,
    tools: list[dict[str, Any]] | None = None,
) -> None:
    """What consumers load the artifacts with: Ollama Modelfiles and the Java kit (with the tool
    definitions a model trained on tool rows was trained with)."""
    from edgeft.ship.publish import write_modelfiles

    write_modelfiles(w.tmp, artifacts, report, cfg.name, cfg.license)
    gguf_files = [Path(a.path).name for a in artifacts if a.format == formats.GGUF]
    onnx = [a for a in artifacts if a.format == formats.ONNX]
    genai = [a.path for a in artifacts if a.format == formats.ONNX_GENAI]
    if gguf_files or onnx or genai:
        from edgeft.ship.javakit import write_kit

        prompt_formats = [a.prompt_format for a in artifacts if a.prompt_format]
        write_kit(
            w.tmp / "java",
            cfg.name,
            gguf_files,
            onnx,
            genai,
            prompt_formats[0] if prompt_formats else None,
            tools,
        )


def _lineage(cfg: Config, merge: Stage, matrix: dict[str, Any] | None) -> dict[str, Any]:
    """Where the model came from: base, data, adapter, method, training, importance matrix."""
    lineage = {
        "base_model": cfg.base_model,
        "dataset": portable_dataset(cfg, merge.dataset),
        "adapter": (
            {
                "files": file_table(merge.artifact_path("adapter")),
                "quantization": cfg.train.quantization,
                "dora": cfg.train.dora,
            }
            if merge.has("adapter")
            else None
        ),
        "method": cfg.train.method,
        "training": {k: v for k, v in merge.metrics.items() if k != "merge_comparison"},
    }
    if matrix is not None:
        lineage["importance_matrix"] = matrix
    return lineage


@in_session
def package_dist(cfg: Config, out_dir: Path | None = None, *, force: bool = False) -> Stage:
    """Build dist/<name>/ from the config's stage directories (verify and eval must have passed on
    exactly these artifacts). An earlier dist of edgeft's is replaced; anything else only with `force`."""
    merge = stages.load(cfg, stages.MERGE)
    exports = stages.exports(cfg)
    verify, report, evaluated, results = _judged(cfg, merge, exports)
    out_dir = stages.directory(cfg, stages.DIST, out_dir)
    with stages.writer(
        cfg,
        stages.DIST,
        out_dir,
        inputs_hash(cfg, [merge, *exports, verify, evaluated]),
        verify,
        force=force,
        replace_own=True,
    ) as w:
        artifacts = _place_artifacts(w, exports, report)
        matrix = _place_matrix(exports, w.tmp / "gguf")
        for name in ("report.json", "report.md", "kl.png"):
            if verify.file(name).is_file():
                _place(verify.file(name), w.tmp / "verify" / name)
        for name in ("results.json", "results.md"):
            _place(evaluated.file(name), w.tmp / "eval" / name)
        _write_consumers(w, cfg, artifacts, report, merge.metrics.get("tools"))
        front = frontier.write(w.tmp, artifacts, report, results)
        lineage = _lineage(cfg, merge, matrix)
        (w.tmp / "README.md").write_text(model_card(cfg, lineage, artifacts, report, results, front))
        w.extra.update(
            name=cfg.name,
            versions=versions(),
            lineage=lineage,
            files=file_table(w.tmp),
            verify={"passed": report.passed, "failures": report.failures},
            evaluation=_eval_summary(results),
            recommended=front["recommended"],
        )
        # manifest.json is the user-facing copy of the same data (edgeft.json marks completeness).
        (w.tmp / "manifest.json").write_text(json.dumps(w.manifest(), indent=2, default=str) + "\n")
        stage = w.publish()
    log.info("dist written to %s", stage.path)
    return stage


METHOD_NAMES = {"lora": "LoRA fine-tune", "qlora": "QLoRA fine-tune", "full": "full fine-tune"}


def training_line(t: Any) -> str:
    """How it was trained, in one line (the model card)."""
    if t.method == "full":
        return f"full fine-tune (every weight), learning rate {t.learning_rate:g}"
    kind = "DoRA" if t.dora else "LoRA"
    base = (
        f"on a {t.quantization} 4-bit base (QLoRA)"
        if t.method == "qlora"
        else "on the base in its compute dtype"
    )
    return f"{kind} r={t.lora_r}, alpha={t.lora_alpha}, {base}, learning rate {t.learning_rate:g}"


def portable_dataset(cfg: Config, data: dict[str, Any] | None) -> dict[str, Any] | None:
    """The data record with the build machine's paths made relative to the config file (a dist
    is shipped elsewhere; the sha256 identifies the file)."""
    if not data:
        return data
    from edgeft.data.check import data_files

    # Longest first: a data folder outside the config's folder loses its whole prefix.
    prefixes = sorted(
        {str(cfg.root.resolve()) + "/", *(str(p.resolve().parent) + "/" for p in data_files(cfg))},
        key=len,
        reverse=True,
    )

    def portable(value: Any) -> Any:
        if isinstance(value, str):
            for prefix in prefixes:
                value = value.replace(prefix, "")
            return value
        if isinstance(value, list):
            return [portable(v) for v in value]
        if isinstance(value, dict):
            return {k: portable(v) for k, v in value.items()}
        return value

    return portable(data)


def _matrix_lines(matrix: dict[str, Any] | None) -> list[str]:
    if not matrix:
        return []
    if matrix.get("source") == "auto":
        what = (
            f"computed by llama-imatrix on the training split rendered with the chat template "
            f"({matrix['tokens']} tokens, data sha256 `{matrix['data_sha256'][:16]}…`, {matrix['tool']})"
        )
    else:
        what = f"given by the user (`{matrix['source']}`)"
    return [
        f"GGUF files marked (imatrix) were quantized with the importance matrix `gguf/{matrix['file']}`, {what}.",
        "",
    ]


def _align_lines(a: dict[str, Any] | None) -> list[str]:
    """The model card's line on preference tuning after SFT (the align stage's record)."""
    if not a:
        return []
    h = a["health"]
    state = "healthy" if h["healthy"] else "outside the healthy range: " + "; ".join(h["problems"])
    return [
        f"- preference tuning: {a['method'].upper()} ({a['loss_type']} loss, beta {a['beta']:g}, learning rate "
        f"{a['learning_rate']:g}) after SFT, {a['steps']} steps on {a['train_pairs']} pairs against the SFT model; "
        f"held-out reward accuracy {h['accuracy']:.2f}, margin {h['margin']:.3g} ({state})"
    ]


def _eval_summary(results: EvalResults) -> dict[str, Any]:
    out: dict[str, Any] = {
        "passed": results.passed,
        "examples": results.examples,
        "format": results.format,
        "min_relative": results.min_relative,
        "alpha": results.alpha,
        "min_discordant": results.min_discordant,
        "examples_needed": results.examples_needed,
        "scores": {name: m.scores for name, m in results.models.items()},
        "improvement": results.improvement,
    }
    if results.general is not None:
        out["forgetting"] = {k: results.general[k] for k in ("chrf_drop", "forgetting", "tolerance")}
    if results.preference is not None:
        pref = results.preference
        out["preference"] = {"pairs": pref.pairs, "accuracy": pref.accuracy(), "versus": pref.versus}
    return out


def _eval_rows(results: EvalResults) -> list[str]:
    extra = [m for m in OPTIONAL_BINARY if m in results.fine_tuned.scores]
    rows = [
        "| model | runtime | exact match | chrF |" + "".join(f" {METRIC_NAMES[m]} |" for m in extra),
        "|---|---|---|---|" + "---|" * len(extra),
    ]
    for name, m in results.models.items():
        s = m.scores
        rows.append(
            f"| {name} | {m.runtime} | {s['exact_match']:.3f} | {s['chrf']:.1f} |"
            + "".join(f" {s[k]:.3f} |" for k in extra)
        )
    return rows


def model_card(
    cfg: Config,
    lineage: dict[str, Any],
    artifacts: list[Artifact],
    report: VerifyReport,
    results: EvalResults,
    front: dict[str, Any] | None = None,
) -> str:
    t = lineage["training"]
    data = lineage.get("dataset") or {}
    rows = ["| file | type | runtime | size | KL mean | top-1 | verify |", "|---|---|---|---|---|---|---|"]
    for a in artifacts:
        v = a.verify
        rows.append(
            f"| `{a.path}` | {a.type} | {a.runtime} | {(a.bytes or 0) / 1e6:.2f} MB | "
            f"{v['kl_mean']:.2g} | {v['top1']:.3f} | {'pass' if v['passed'] else 'FAIL'} |"
        )
    return "\n".join(
        [
            f"# {cfg.name}",
            "",
            f"A {METHOD_NAMES[cfg.train.method]} of `{cfg.base_model}` made with edgeft {__version__}, exported "
            f"for edge runtimes. Every file below was loaded in its runtime and compared with the merged "
            f"model in transformers (fp32) by `edgeft verify`.",
            "",
            "## Training",
            f"- data: `{data.get('train_file')}` (sha256 `{str(data.get('train_sha256'))[:16]}…`), "
            f"{data.get('train_rows')} training / {data.get('validation_rows')} validation rows",
            f"- {training_line(cfg.train)}, {t.get('steps')} steps",
            f"- validation loss: base {t.get('base_val_loss')} → fine-tuned {t.get('val_loss')}",
            *_align_lines(t.get("align")),
            *([f"- chat template: {t['chat_template']}"] if t.get("chat_template") else []),
            *(
                [
                    f"- tool calls: trained on tool rows in edgeft's tool format (`{t['tool_format']}`): tools "
                    f"and calls are rendered as text before the chat template (docs/data-and-training.md, "
                    f"Tool calling); `edgeft serve` takes OpenAI `tools` and answers `tool_calls`"
                ]
                if t.get("tool_format")
                else []
            ),
            *([f"- base weights: {t['base_source']}"] if t.get("base_source") else []),
            "",
            "## Artifacts",
            *rows,
            "",
            f"Verification: {'passed' if report.passed else 'FAILED'} on {len(report.probes)} held-out "
            f"prompts (details in `verify/report.md`). Checksums of every file are in `manifest.json`.",
            "",
            "## Evaluation",
            f"Greedy replies to {results.examples} held-out prompts, scored by exact match (whitespace-normalised), "
            f"chrF"
            + (f", format compliance ({results.format})" if results.format else "")
            + (
                ", tool-call accuracy (the reference's calls, or none, each valid against its tool's schema)"
                if "tool_call" in results.fine_tuned.scores
                else ""
            )
            + " (`eval/results.md`). Each artifact is compared with the fine-tuned model on the same examples: "
            + gate_rule(results),
            "",
            *_eval_rows(results),
            "",
            *verdict_lines(results, short=True),
            "",
            *(
                [
                    f"General-capability prompts: fine-tuned chrF {-100 * results.general['chrf_drop']:+.0f}% vs base"
                    + (" — catastrophic forgetting flagged." if results.general["forgetting"] else "."),
                    "",
                ]
                if results.general is not None
                else []
            ),
            *([*preference_lines(results.preference), ""] if results.preference is not None else []),
            *(
                [
                    "## Size, quality and speed",
                    "",
                    frontier.markdown(front["rows"], results),
                    "![frontier](frontier.png)",
                    "",
                ]
                if front
                else []
            ),
            *_matrix_lines(lineage.get("importance_matrix")),
            "## Use",
            "- GGUF: llama.cpp (`llama-cli -m gguf/<file> -cnv`), llama-cpp-python, or Java through JNA over "
            "`libllama` (`java/`, a tested example); the chat template and end-of-turn token are embedded.",
            "- Ollama: `ollama create <name> -f gguf/<file>.Modelfile` (a Modelfile beside each GGUF, with the stop "
            "tokens and context length verify checked; `gguf/lora/Modelfile` applies the adapter to its base). LM Studio: "
            "`edgeft export lmstudio <this folder> ~/.lmstudio/models`.",
            "- ONNX: ONNX Runtime with `onnx/<type>/model.onnx` and `tokenizer.json` beside it; the input "
            "and output names are listed in `manifest.json`.",
            "",
        ]
    )
