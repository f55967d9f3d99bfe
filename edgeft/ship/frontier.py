"""The size–quality–speed frontier of a build: one row per artifact, a scatter plot, a recommendation.

From what the build already measured, on one machine in one run: each artifact's bytes and bits
per weight (export), KL mean / p99 and top-1 against the fp32 reference (verify), its task score and
CPU prompt / generation tokens/s (eval). The recommendation is the smallest artifact that passed
both gates. Written into the dist as `frontier.json`, `frontier.md` and `frontier.png`, and into
the model card.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from edgeft.core import formats
from edgeft.core.manifest import Artifact
from edgeft.pipeline.evaluate.results import EvalResults
from edgeft.pipeline.verify.report import VerifyReport

log = logging.getLogger(__name__)


def _score_metric(results: EvalResults) -> str:
    scores = results.fine_tuned.scores
    return "exact_match" if "exact_match" in scores else next(iter(scores))


def rows(artifacts: list[Artifact], report: VerifyReport, results: EvalResults) -> list[dict[str, Any]]:
    """One row per artifact, smallest first."""
    metric = _score_metric(results)
    params = next((a.get("parameters") for a in artifacts if a.get("parameters")), None)
    out = []
    for a in artifacts:
        verdict = report.verdict(a.name)
        numbers = verdict.numbers if verdict else {}
        ev = results.models.get(a.name)
        bpw = a.get("bits_per_weight") or (round(8 * a.bytes / params, 2) if params and a.bytes else None)
        speed = (ev.speed if ev else None) or {}
        verified, evaluated = bool(a.verify.get("passed")), bool(ev and ev.passed)
        band = formats.band(a.format, str(a.type), a.get("tensor_types"))
        out.append(
            {
                "name": a.name,
                "format": a.format,
                "type": a.type,
                "bytes": a.bytes,
                "bits_per_weight": bpw,
                "kl_mean": numbers.get("kl_mean"),
                "kl_p99": numbers.get("kl_p99"),
                "top1": numbers.get("top1"),
                "band_kl_mean": band.kl_mean if band else None,
                "score": ev.scores.get(metric) if ev else None,
                "metric": metric,
                "prompt_tokens_per_s": speed.get("prompt_tokens_per_s"),
                "generation_tokens_per_s": speed.get("generation_tokens_per_s"),
                "importance_matrix": bool(a.get("importance_matrix")),
                "verify_passed": verified,
                "eval_passed": evaluated,
                "passed": verified and evaluated,
            }
        )
    return sorted(out, key=lambda r: r["bytes"])


def recommend(table: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The smallest artifact that passed verify and eval (None: none did)."""
    return next((r for r in table if r["passed"]), None)


def _fmt(v: Any, spec: str) -> str:
    return "–" if v is None else format(v, spec)


def markdown(table: list[dict[str, Any]], results: EvalResults) -> str:
    best = recommend(table)
    metric = table[0]["metric"] if table else "score"
    ref = results.fine_tuned.scores.get(metric)
    lines = [
        "| artifact | size | bits/weight | KL mean | KL p99 | top-1 | "
        + metric.replace("_", " ")
        + " | prompt tok/s | gen tok/s | gates |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in table:
        gates = "pass" if r["passed"] else ("verify FAIL" if not r["verify_passed"] else "eval FAIL")
        star = "**" if best is r else ""
        lines.append(
            f"| {star}{r['name']}{star}{' (imatrix)' if r['importance_matrix'] else ''} | "
            f"{r['bytes'] / 1e6:.1f} MB | {_fmt(r['bits_per_weight'], '.2f')} | {_fmt(r['kl_mean'], '.3g')} | "
            f"{_fmt(r['kl_p99'], '.3g')} | {_fmt(r['top1'], '.3f')} | {_fmt(r['score'], '.3f')} | "
            f"{_fmt(r['prompt_tokens_per_s'], '.0f')} | {_fmt(r['generation_tokens_per_s'], '.1f')} | {gates} |"
        )
    lines += [
        "",
        f"KL against the fp32 reference on verify's probes; {metric.replace('_', ' ')} on "
        f"{results.examples} held-out examples (fine-tuned model: {_fmt(ref, '.3f')}); CPU tokens/s "
        f"measured by eval in the same run (one prompt at a time).",
    ]
    lines += [
        "",
        f"**Recommended: `{best['name']}`** — the smallest artifact that passes both gates "
        f"({best['bytes'] / 1e6:.1f} MB)."
        if best
        else "",
        "No artifact passed both gates." if not best else "",
    ]
    return "\n".join(line for line in lines if line is not None).rstrip() + "\n"


def plot(table: list[dict[str, Any]], path: Path) -> None:
    """Size against mean KL (log scale), each point labelled; the band each type is held to drawn
    as a dash above its point; passing artifacts filled, failing ones hollow and red."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = [r for r in table if r["kl_mean"] is not None]
    fig, ax = plt.subplots(figsize=(8, 5), dpi=110)
    floor = min([r["kl_mean"] for r in pts if r["kl_mean"] > 0] or [1e-6]) / 3
    best = recommend(table)
    placed: list[tuple[float, float]] = []
    for r in pts:
        x, y = r["bytes"] / 1e6, max(r["kl_mean"], floor)
        ok = r["passed"]
        ax.scatter(
            [x],
            [y],
            s=60 if r is best else 36,
            facecolors="tab:blue" if ok else "none",
            edgecolors="tab:blue" if ok else "tab:red",
            zorder=3,
        )
        # A label next to one already placed (f16 and its LoRA pair: same KL, sizes 4% apart) goes below.
        crowded = sum(abs(x / px - 1) < 0.15 and 1 / 3 < y / py < 3 for px, py in placed)
        ax.annotate(
            r["name"] + (" ★" if r is best else ""),
            (x, y),
            textcoords="offset points",
            xytext=(5, 4 - 12 * crowded),
            fontsize=8,
        )
        placed.append((x, y))
        if r["band_kl_mean"]:
            ax.hlines(r["band_kl_mean"], x * 0.97, x * 1.03, colors="gray", linestyles="dashed", zorder=2)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("size (MB)")
    ax.set_ylabel("mean KL vs fp32 reference (nats)")
    ax.set_title("size vs fidelity: filled = passed verify and eval; dashes = each type's KL band")
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write(
    folder: Path, artifacts: list[Artifact], report: VerifyReport, results: EvalResults
) -> dict[str, Any]:
    """frontier.json, frontier.md and frontier.png in `folder`; the summary the manifest carries."""
    table = rows(artifacts, report, results)
    best = recommend(table)
    summary = {"recommended": best["name"] if best else None, "rows": table}
    (folder / "frontier.json").write_text(json.dumps(summary, indent=2) + "\n")
    (folder / "frontier.md").write_text("# Size, quality and speed\n\n" + markdown(table, results))
    plot(table, folder / "frontier.png")
    return summary
