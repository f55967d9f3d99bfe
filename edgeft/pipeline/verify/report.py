"""The verify report in Markdown, and the plot of KL divergence per position."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def markdown_report(report: dict[str, Any]) -> str:
    lines = ["# edgeft verify report", "",
             f"Reference: `{report['reference']}` (transformers, fp32); {len(report['probes'])} probes.", "",
             "| artifact | runtime | KL mean | KL p99 | KL max | top-1 | max Δlogit | gen prefix | result |",
             "|---|---|---|---|---|---|---|---|---|"]
    keys = ("kl_mean", "kl_p99", "kl_max", "top1", "max_dlogit", "generation_prefix")
    for name, a in report["artifacts"].items():
        cells = " | ".join(f"{a['numbers'][k]:.3g}" if k in a["numbers"] else "–" for k in keys)
        lines.append(f"| {name} | {a['runtime']} | {cells} | {'pass' if a['passed'] else 'FAIL'} |")
    second = {n: a["second_opinion"] for n, a in report["artifacts"].items() if "second_opinion" in a}
    if second:
        first = next(iter(second.values()))
        lines += ["", f"Second opinion: llama.cpp's llama-perplexity `--kl-divergence` against llama.cpp's own f32 "
                  f"GGUF of the reference, and edgeft on the same {first['positions']} positions ({first['chunks']} "
                  f"chunks of {first['context']} tokens of the held-out conversations, second halves):", "",
                  "| artifact | llama-perplexity KL mean | edgeft KL mean | p99 (theirs / ours) | top-1 (theirs / ours) "
                  "| agree |", "|---|---|---|---|---|---|"]
        for n, r in second.items():
            t, o = r["llama_perplexity"], r["edgeft"]
            lines.append(f"| {n} | {t['kl_mean']:.4g} | {o['kl_mean']:.4g} | {t.get('kl_p99', float('nan')):.3g} / "
                         f"{o['kl_p99']:.3g} | {t.get('top1', float('nan')):.3f} / {o['top1']:.3f} | "
                         f"{'yes' if r['agree'] else 'NO'} |")
    lines += ["", "**Passed.**" if report["passed"] else "**Failed:**", ""]
    lines += [f"- {f}" for f in report["failures"]]
    skipped = sorted({f"{check}: {r['detail']}" for a in report["artifacts"].values()
                      for check, r in a.get("checks", {}).items() if r.get("skipped")})
    if skipped:
        lines += ["", "Skipped on this machine (not counted as passed checks):", *[f"- {s}" for s in skipped]]
    return "\n".join(lines) + "\n"


def plot_kl(curves: dict[str, np.ndarray], lengths: list[int], names: list[str], out: Path) -> None:
    """KL divergence at every probe position, one line per artifact (log scale), probes marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(11, 4.5), dpi=100)
    floor = 1e-12  # lossless artifacts sit at float noise; keep them on a log axis
    for name, kl in curves.items():
        ax.plot(np.maximum(kl, floor), linewidth=0.8, label=name)
    edge = 0
    for n in lengths:
        edge += n
        ax.axvline(edge, color="grey", linewidth=0.4, alpha=0.6)
    ax.set_yscale("log")
    ax.set_xlabel(f"position over {len(names)} probes (grey lines: probe boundaries)")
    ax.set_ylabel("KL(reference || artifact), nats")
    ax.set_title("edgeft verify: next-token KL divergence per position")
    ax.legend(fontsize=7, ncol=2, loc="upper left")
    ax.grid(alpha=0.2)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
