"""The verify stage: every artifact, loaded in its runtime, through every check family."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgeft.core import formats, stages
from edgeft.core.config import Config, parse_config
from edgeft.core.errors import ConfigError, InputError, VerifyFailed, describe
from edgeft.core.fileio import hash_json
from edgeft.core.manifest import Artifact, Stage, StageWriter
from edgeft.core.workdir import in_session
from edgeft.data.rows import read_split
from edgeft.judge.gate import Gate, load_or_why
from edgeft.judge.integrity import checksum_problems, dist_problems
from edgeft.models import gguf_header
from edgeft.models.base import end_of_turn
from edgeft.pipeline.verify import distribution, files, generation, jsjinja, tokens
from edgeft.pipeline.verify.checks import Checks
from edgeft.pipeline.verify.probes import Probe, Reference, edge_probes, probes_from, reference_outputs
from edgeft.pipeline.verify.report import Verdict, VerifyReport, markdown_report, plot_kl
from edgeft.runtimes import Runtime

log = logging.getLogger(__name__)


# What a report holds; a new edition re-verifies stages an older edgeft verified (2: the stop tokens
# and the context covered, which the Ollama Modelfiles are written from).
REPORT = 2


def inputs_hash(cfg: Config, upstream: Sequence[Stage]) -> str:
    """The reference's inputs, the *bytes* of every artifact (a re-export that changed them
    re-verifies), and the verify section. `upstream`: the merge stage, then the export stages."""
    merged, *exports = upstream
    return hash_json([merged.inputs_hash, [e.content_hash() for e in exports], cfg.section("verify"), REPORT])


def _second_opinion(cfg: Config, on: bool | None) -> Config:
    """The config with verify.second_opinion set to `on` (edgeft verify --second-opinion or
    --no-second-opinion); None keeps the config's."""
    return (
        cfg
        if on is None
        else dataclasses.replace(cfg, verify=dataclasses.replace(cfg.verify, second_opinion=on))
    )


def verify_path(
    path: Path,
    merge_dir: Path | None = None,
    out_dir: Path | None = None,
    *,
    force: bool = False,
    second_opinion: bool | None = None,
) -> Stage:
    """Verify a dist folder or an export stage on its own: its manifest says how it was made and,
    unless `merge_dir` is given, where the merged reference model is. A dist's own files are
    checked too (`dist_problems`)."""
    stage = stages.read(path, (stages.DIST, *stages.EXPORTS))
    try:
        cfg = parse_config(stage.config)
    except ConfigError as e:
        raise InputError(f"{path}: its manifest's config is not valid: {e}") from None
    if merge_dir is None:
        try:
            merge_dir = stage.ancestor(stages.MERGE).path
        except InputError:
            raise InputError(
                f"{path}: its reference model ({stage.parent}) is not here; pass --merge-dir with the "
                f"merge stage it was exported from"
            ) from None
    out = Path(out_dir) if out_dir else Path(path).with_name(Path(path).name + "-verify")
    gate = Gate.open(
        _second_opinion(cfg, second_opinion),
        stages.VERIFY,
        merge_dir,
        out_dir=out,
        force=force,
        exports=[stage],
    )
    return _verify(gate, dist_problems(stage) if stage.kind == stages.DIST else [])


@in_session
def verify_artifacts(
    cfg: Config,
    merge_dir: Path | None = None,
    export_dirs: list[Path] | None = None,
    out_dir: Path | None = None,
    *,
    force: bool = False,
    second_opinion: bool | None = None,
) -> Stage:
    """Compare every artifact of the config's (or the given) export stages with the merged model;
    publish the report (replacing an earlier verify report, nothing else without `force`)."""
    return _verify(
        Gate.open(
            _second_opinion(cfg, second_opinion), stages.VERIFY, merge_dir, export_dirs, out_dir, force=force
        )
    )


def _verify(gate: Gate, dist_findings: list[str] | None = None) -> Stage:
    from edgeft.runtimes.hf import HFRuntime

    cfg, v = gate.cfg, gate.cfg.verify
    probes = probes_from(read_split(gate.merged.file("validation.jsonl")), v.max_prompts)
    ref_rt = HFRuntime(gate.reference_dir)
    eot = end_of_turn(ref_rt.tokenizer)
    context = int(getattr(ref_rt.model.config, "max_position_embeddings", 0) or v.context_tokens)
    n_ctx = min(context, v.context_tokens)
    if v.edge_cases:
        tok = ref_rt.tokenizer
        probes += edge_probes(
            probes,
            lambda m: len(tok.apply_chat_template(m, add_generation_prompt=True)),
            n_ctx - v.max_new_tokens - 8,
        )
    log.info("reference: transformers fp32 on %d probes", len(probes))
    ref = reference_outputs(ref_rt, probes, v.max_new_tokens, eot[1] if eot else None)
    tokenizer = ref_rt.tokenizer
    del ref_rt
    report = VerifyReport(
        reference=str(gate.merged.path), probes=[p.name for p in probes], context_tokens=n_ctx, artifacts={}
    )
    failures: list[str] = [f"dist: files: {p}" for p in dist_findings or []]
    curves: dict[str, np.ndarray] = {}
    for stage, art in gate.artifacts():
        entry, checks = verify_artifact(stage, art, ref, probes, gate.reference_dir, n_ctx, v.max_new_tokens)
        if checks.kl_curve is not None:
            curves[art.name] = checks.kl_curve
        report.artifacts[art.name] = entry
        failures += checks.failures
    if v.second_opinion:
        failures += _second_opinions(gate, report)
    # Every stop token in play, as text: the end-of-turn token training ended answers with and any
    # token the reference's greedy replies ended on, and each artifact's own stop set (its
    # special_tokens check); package writes Ollama's `stop`s from them.
    reference_stops = sorted({*ref.stopped_on, *([ref.end_of_turn] if ref.end_of_turn is not None else [])})
    ids = {*reference_stops, *(i for a in report.artifacts.values() for i in a.stop_ids)}
    report.stops = {
        "reference": reference_stops,
        "tokens": {str(i): tokenizer.convert_ids_to_tokens(int(i)) for i in sorted(ids)},
    }
    if dist_findings is not None:
        report.dist_files = {"passed": not dist_findings, "problems": dist_findings}
    report.passed = not failures
    report.failures = failures

    def plot(w: StageWriter) -> None:
        if curves:
            plot_kl(curves, [len(ids) for ids in ref.full_ids], [p.name for p in probes], w.tmp / "kl.png")
            w.add_artifact("kl-plot", "kl.png", formats.PNG)

    return gate.publish(
        inputs_hash(cfg, [gate.merged, *gate.exports]),
        "report",
        report.to_json(),
        markdown_report(report),
        failures,
        VerifyFailed,
        f"verification failed ({len(failures)} check(s))",
        more=plot,
    )


def behaviour(
    rt: Runtime, ref: Reference, probes: list[Probe], band: formats.Band, checks: Checks, max_new_tokens: int
) -> dict[str, Any]:
    """Every check family that runs the artifact, in order; returns the numbers for the report."""
    tokens.token_ids(rt, ref, probes, checks)
    tokens.chat_template(rt, ref, probes, checks)
    jsjinja.js_template(rt, ref, probes, checks)
    tokens.special_tokens(rt, ref, checks)
    numbers = distribution.next_token(rt, ref, probes, band, checks)
    numbers.update(generation.greedy(rt, ref, probes, band, checks, max_new_tokens))
    return numbers


def _second_opinions(gate: Gate, report: VerifyReport) -> list[str]:
    """llama-perplexity's KL beside edgeft's for every GGUF file whose bytes passed (verify/second.py);
    each artifact gets a `second_opinion` check. Returns the failures."""
    from edgeft.pipeline.verify import second

    ggufs = {
        art.name: stage.file(art.path)
        for stage, art in gate.artifacts()
        if art.format == formats.GGUF and report.artifacts[art.name].checks["checksums"].passed
    }
    if not ggufs:
        return []
    conversations = [
        r["messages"] for r in read_split(gate.merged.file("validation.jsonl")) if "messages" in r
    ]
    failures = []
    for name, res in second.run(gate.reference_dir, ggufs, conversations, gate.cfg.name).items():
        entry = report.artifacts[name]
        entry.second_opinion = res
        ours, theirs = res["edgeft"]["kl_mean"], res["llama_perplexity"]["kl_mean"]
        detail = (
            f"mean KL edgeft {ours:.4g}, llama-perplexity {theirs:.4g} on the same {res['positions']} positions "
            f"(gap {res['gap']:.2g}, allowed {res['limit']:.2g})"
        )
        entry.add_check("second_opinion", bool(res["agree"]), detail)
        if not res["agree"]:
            failures.append(f"{name}: second_opinion: {detail}")
    return failures


def verify_artifact(
    stage: Stage,
    art: Artifact,
    ref: Reference,
    probes: list[Probe],
    model_dir: Path,
    n_ctx: int,
    max_new_tokens: int,
) -> tuple[Verdict, Checks]:
    """Every check of one artifact. A file that passes its checksum but cannot be read (a GGUF
    header with an absurd count, a corrupt model.onnx) fails this artifact alone, naming why."""
    name = art.name
    checks = Checks(name)
    type_key = art.type_key
    band = formats.band(art.format, str(art.type), art.get("tensor_types"))
    numbers: dict[str, Any] = {}
    bad_files = checksum_problems(stage, art)
    checks.add("checksums", not bad_files, "; ".join(bad_files) or "files match the manifest")
    if band is None:
        checks.add("type", False, f"no band for artifact type {type_key!r}: not an artifact edgeft exports")
    elif not bad_files:
        runtime = art.runtime or "its runtime"
        rt: Runtime | None
        why: str | None
        try:
            if art.format == formats.GGUF:
                gguf_header.read(stage.file(art.path))  # within bounds first: gguf's reader has none
                numbers.update(files.file_checks(stage.file(art.path), model_dir, str(art.type), checks))
        except Exception as e:
            log.debug("%s could not be read", name, exc_info=True)
            rt, why = None, describe(e)
        else:
            rt, why = load_or_why(stage, art, n_ctx=n_ctx)
        if rt is None:
            checks.add("readable", False, f"{runtime} cannot read it: {why}")
        else:
            log.info("verifying %s in %s", name, runtime)
            # The artifact is what failed, whatever its runtime raised: report it, go on with the others.
            try:
                with rt:
                    numbers.update(behaviour(rt, ref, probes, band, checks, max_new_tokens))
                if art.prompt_format is not None:
                    files.prompt_format_check(stage, art, ref, probes, checks)
            except Exception as e:
                log.debug("%s failed while running", name, exc_info=True)
                checks.add("runs", False, f"{runtime} loaded it but failed running it: {describe(e)}")
    entry = Verdict(
        file=art.path,
        type=type_key,
        runtime=art.runtime,
        band=band.__dict__ if band else None,
        numbers=numbers,
        checks=checks.results,
        passed=not checks.failures,
        sha256=art.sha256,
        files=art.files,
    )
    return entry, checks
