"""The registry's promotion comparison: what two versions share (eval scores, verify's KL and
top-1) and where the new one is worse. With both versions' per-example results it is eval's own
paired test (pipeline/evaluate/results.py); the registry has no second gate."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgeft.pipeline.evaluate.results import METRICS, VersionResults, compare_versions
from edgeft.registry.index import Version


def compare(new: Version, old: Version) -> list[dict[str, Any]]:
    """Rows of what two versions share: eval scores (the fine-tuned model and each artifact both ship)
    and verify's KL mean / top-1 per shared artifact. Higher is better for every row but KL."""
    rows = []
    a, b = new.scores, old.scores
    for model in [m for m in a if m in b and m != "base"]:
        for metric in METRICS:
            if metric in a[model] and metric in b[model]:
                rows.append(
                    {
                        "what": "eval",
                        "model": model,
                        "metric": metric,
                        "new": a[model][metric],
                        "old": b[model][metric],
                        "higher_is_better": True,
                    }
                )
    va = {x.name: x.verify for x in new.artifacts}
    vb = {x.name: x.verify for x in old.artifacts}
    for name in [n for n in va if n in vb]:
        for metric, better in (("kl_mean", False), ("top1", True)):
            if va[name].get(metric) is not None and vb[name].get(metric) is not None:
                rows.append(
                    {
                        "what": "verify",
                        "model": name,
                        "metric": metric,
                        "new": va[name][metric],
                        "old": vb[name][metric],
                        "higher_is_better": better,
                    }
                )
    return rows


def regressions(
    new: Version, old: Version, new_dir: Path | None = None, old_dir: Path | None = None
) -> list[str]:
    """The promotion gate: where `new` is worse than `old`. With both versions' per-example eval
    results (eval/results.json), eval's paired test on the examples they share, for the
    fine-tuned model and each artifact both ship (the new version's eval.alpha, min_discordant
    and min_relative); without (versions evaluated before it), any drop of a shared score."""
    new_results, old_results = VersionResults.read(new_dir), VersionResults.read(old_dir)
    if new_results is not None and old_results is not None:
        return compare_versions(new_results, old_results)
    return [
        f"{r['model']} {r['metric']} {r['new']:.4g} < {r['old']:.4g}"
        for r in compare(new, old)
        if r["what"] == "eval" and r["new"] < r["old"] - 1e-9
    ]
