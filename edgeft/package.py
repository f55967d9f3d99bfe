"""Assemble `dist/<name>/`: what a deploying team ships, with checksums and lineage.

Consumes the train, merge, export, verify and eval stages; produces `dist/<name>/` with `gguf/`,
`onnx/<type>/`, `verify/report.{json,md}`, `eval/results.{json,md}`, `java/` (the JNA kit for the GGUF files, see
javakit.py), `README.md` (the model card) and `manifest.json`
(every file with bytes and sha256, the resolved config, versions of edgeft and of the pinned
stack, lineage: base model, dataset hash, adapter, training metrics, and the verify result).

    edgeft package -c examples/nl2sql/edgeft.yaml
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import os
import platform
import shutil
from pathlib import Path
from typing import Any

from edgeft import __version__
from edgeft.config import Config
from edgeft.errors import InputError
from edgeft.manifest import Stage, StageWriter, file_table, hash_json, read_stage
from edgeft.paths import vendor_dir

log = logging.getLogger(__name__)

# The pinned stack whose versions every dist records (DESIGN.md).
STACK = ("torch", "transformers", "tokenizers", "peft", "trl", "accelerate", "datasets",
         "bitsandbytes", "sentencepiece", "onnx", "onnxruntime", "optimum", "optimum-onnx",
         "llama-cpp-python", "gguf")


# What a dist manifest repeats from each export artifact's entry.
CARRIED = ("bits_per_weight", "parameters", "fallback_tensors", "importance_matrix", "metadata", "base_file",
           "adapter_file", "model_file", "opset", "inputs", "outputs")


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
    return out


def _place(src: Path, dst: Path) -> None:
    """Hard-link when possible (same filesystem: instant, no extra space), else copy."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    if src.is_dir():
        for f in sorted(src.rglob("*")):
            if f.is_file():
                _place(f, dst / f.relative_to(src))
        return
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def inputs_hash(stages: list[Stage]) -> str:
    return hash_json([s.inputs_hash for s in stages])


def export_stages(cfg: Config, dirs: list[Path] | None = None) -> list[Stage]:
    """The export stages in `dirs` (export stages or dist folders), or else the ones the config asks
    for (a type list left empty means no such export)."""
    if dirs is not None:
        return [read_stage(d, ("export-gguf", "export-onnx", "dist")) for d in dirs]
    wanted = [("export-gguf", cfg.export.gguf.types), ("export-onnx", cfg.export.onnx.types)]
    return [read_stage(cfg.run_dir / kind, kind) for kind, types in wanted if types]


def package_dist(cfg: Config, out_dir: Path | None = None, *, force: bool = True) -> Stage:
    """Build dist/<name>/ from the config's stage directories (verify must have passed)."""
    run = cfg.run_dir
    train = read_stage(run / "train", "train")
    merge = read_stage(run / "merge", "merge")
    exports = export_stages(cfg)
    verify = read_stage(run / "verify", "verify")
    if not verify.metrics.get("passed"):
        raise InputError(f"{verify.path}: verification did not pass; fix the failures in "
                         f"{verify.file('report.md')} before packaging")
    report = json.loads(verify.file("report.json").read_text())
    if not (run / "eval" / "edgeft.json").is_file():
        raise InputError(f"{run / 'eval'}: no evaluation results; run `edgeft eval -c {cfg.source or 'CONFIG'}` first")
    evaluated = read_stage(run / "eval", "eval")
    if not evaluated.metrics.get("passed"):
        raise InputError(f"{evaluated.path}: evaluation failed its regression gate; see "
                         f"{evaluated.file('results.md')}")
    results = json.loads(evaluated.file("results.json").read_text())
    out_dir = Path(out_dir) if out_dir else cfg.dist_path
    with StageWriter(out_dir, "dist", config=cfg.to_dict(),
                     inputs_hash=inputs_hash([train, merge, *exports, verify, evaluated]),
                     parent=str(verify.path), base_model=cfg.base_model, force=force) as w:
        artifacts: list[dict[str, Any]] = []
        for stage in exports:
            sub = "gguf" if stage.kind == "export-gguf" else "onnx"
            for a in stage.artifacts:
                rel = f"{sub}/{Path(a['path']).name}"
                _place(stage.file(a["path"]), w.tmp / rel)
                entry = w.add_artifact(a["name"], rel, a["format"], type=a["type"], runtime=a["runtime"],
                                       verify=_verify_summary(report, a["name"]),
                                       **{k: a[k] for k in CARRIED if k in a})
                artifacts.append(entry)
        for name in ("report.json", "report.md", "kl.png"):
            if verify.file(name).is_file():
                _place(verify.file(name), w.tmp / "verify" / name)
        for name in ("results.json", "results.md"):
            _place(evaluated.file(name), w.tmp / "eval" / name)
        gguf_files = [Path(a["path"]).name for a in artifacts if a["format"] == "gguf"]
        onnx = [a for a in artifacts if a["format"] == "onnx"]
        genai = [a["path"] for a in artifacts if a["format"] == "onnx-genai"]
        if gguf_files or onnx or genai:
            from edgeft.javakit import write_kit

            write_kit(w.tmp / "java", cfg.name, gguf_files, onnx, genai)
        adapter_dir = train.file(train.artifact("adapter")["path"])
        lineage = {
            "base_model": cfg.base_model,
            "resolved_base": train.data.get("resolved_base"),
            "dataset": train.data.get("data"),
            "adapter": {"files": file_table(adapter_dir), "quantization": cfg.train.quantization},
            "training": train.metrics,
        }
        (w.tmp / "README.md").write_text(model_card(cfg, lineage, artifacts, report, results))
        files = file_table(w.tmp)
        w.extra.update(name=cfg.name, versions=versions(), lineage=lineage, files=files,
                       verify={"passed": report["passed"], "failures": report["failures"]},
                       evaluation=_eval_summary(results))
        # manifest.json is the user-facing copy of the same data (edgeft.json marks completeness).
        (w.tmp / "manifest.json").write_text(json.dumps(w.manifest(), indent=2, default=str) + "\n")
        stage = w.publish()
    log.info("dist written to %s", stage.path)
    return stage


def _verify_summary(report: dict[str, Any], name: str) -> dict[str, Any]:
    a = report["artifacts"].get(name, {})
    return {"passed": a.get("passed"), **{k: a.get("numbers", {}).get(k) for k in
                                          ("kl_mean", "kl_max", "top1", "max_dlogit", "generation_prefix")}}


def _eval_summary(results: dict[str, Any]) -> dict[str, Any]:
    out = {"passed": results["passed"], "examples": results["examples"], "format": results["format"],
           "min_relative": results["min_relative"],
           "scores": {name: m["scores"] for name, m in results["models"].items()},
           "improvement": results["improvement"]}
    if "general" in results:
        out["forgetting"] = {k: results["general"][k] for k in ("chrf_drop", "forgetting", "tolerance")}
    return out


def _eval_rows(results: dict[str, Any]) -> list[str]:
    fmt = "format" in results["models"]["fine-tuned"]["scores"]
    rows = ["| model | runtime | exact match | chrF |" + (" format |" if fmt else ""),
            "|---|---|---|---|" + ("---|" if fmt else "")]
    for name, m in results["models"].items():
        s = m["scores"]
        rows.append(f"| {name} | {m['runtime']} | {s['exact_match']:.3f} | {s['chrf']:.1f} |"
                    + (f" {s['format']:.3f} |" if fmt else ""))
    return rows


def model_card(cfg: Config, lineage: dict[str, Any], artifacts: list[dict[str, Any]],
               report: dict[str, Any], results: dict[str, Any]) -> str:
    t = lineage["training"]
    data = lineage.get("dataset") or {}
    rows = ["| file | type | runtime | size | KL mean | top-1 | verify |", "|---|---|---|---|---|---|---|"]
    for a in artifacts:
        v = a["verify"]
        rows.append(f"| `{a['path']}` | {a['type']} | {a['runtime']} | {a['bytes'] / 1e6:.2f} MB | "
                    f"{v['kl_mean']:.2g} | {v['top1']:.3f} | {'pass' if v['passed'] else 'FAIL'} |")
    return "\n".join([
        f"# {cfg.name}",
        "",
        f"A LoRA fine-tune of `{cfg.base_model}` made with edgeft {__version__}, merged and exported "
        f"for edge runtimes. Every file below was loaded in its runtime and compared with the merged "
        f"model in transformers (fp32) by `edgeft verify`.",
        "",
        "## Training",
        f"- data: `{data.get('train_file')}` (sha256 `{str(data.get('train_sha256'))[:16]}…`), "
        f"{data.get('train_rows')} training / {data.get('validation_rows')} validation rows",
        f"- LoRA r={cfg.train.lora_r}, alpha={cfg.train.lora_alpha}, quantization={cfg.train.quantization}, "
        f"{t.get('steps')} steps",
        f"- validation loss: base {t.get('base_val_loss')} → fine-tuned {t.get('val_loss')}",
        "",
        "## Artifacts",
        *rows,
        "",
        f"Verification: {'passed' if report['passed'] else 'FAILED'} on {len(report['probes'])} held-out "
        f"prompts (details in `verify/report.md`). Checksums of every file are in `manifest.json`.",
        "",
        "## Evaluation",
        f"Greedy replies to {results['examples']} held-out prompts, scored by exact match (whitespace-normalised), "
        f"chrF" + (f" and format compliance ({results['format']})" if results["format"] else "")
        + f"; every artifact keeps at least {results['min_relative']:.0%} of the fine-tuned model's score "
        f"(`eval/results.md`).",
        "",
        *_eval_rows(results),
        "",
        *([f"General-capability prompts: fine-tuned chrF {-100 * results['general']['chrf_drop']:+.0f}% vs base"
           + (" — catastrophic forgetting flagged." if results["general"]["forgetting"] else ".") , ""]
          if "general" in results else []),
        "## Use",
        "- GGUF: llama.cpp (`llama-cli -m gguf/<file> -cnv`), llama-cpp-python, or Java through JNA over "
        "`libllama` (`java/`, a tested example); the chat template and end-of-turn token are embedded.",
        "- ONNX: ONNX Runtime with `onnx/<type>/model.onnx` and `tokenizer.json` beside it; the input "
        "and output names are listed in `manifest.json`.",
        "",
    ])
