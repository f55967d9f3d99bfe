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


def served_ratings(folders: list[Path], new: str, old: str) -> dict[str, Any]:
    """What users said about two versions in `edgeft serve`'s logs (`new`, `old`: ids such as
    `nl2sql-tiny:3`): per version the ratings' count and mean, and, paired where the same request
    key rated both, each key's mean rating under the new version against the old one: wins,
    losses, ties and the one-sided sign tests (the mid-p test eval's gate uses) that the new one
    is worse, or better."""
    import statistics

    from edgeft.data.served import completions_with_feedback
    from edgeft.judge.paired import mcnemar_p

    rated = [
        r for f in folders for r in completions_with_feedback(Path(f)) if isinstance(r.get("rating"), int)
    ]
    out: dict[str, Any] = {}
    by_key: dict[str, dict[str, list[int]]] = {}
    for label, version in (("new", new), ("old", old)):
        ratings = [r["rating"] for r in rated if r.get("version") == version]
        out[label] = {
            "version": version,
            "ratings": len(ratings),
            "mean": round(statistics.fmean(ratings), 4) if ratings else None,
            "share_4_or_5": round(sum(x >= 4 for x in ratings) / len(ratings), 4) if ratings else None,
        }
    for r in rated:
        if r.get("key") and r.get("version") in (new, old):
            by_key.setdefault(r["key"], {}).setdefault(r["version"], []).append(r["rating"])
    wins = losses = ties = 0
    for seen in by_key.values():
        if new in seen and old in seen:
            d = statistics.fmean(seen[new]) - statistics.fmean(seen[old])
            wins, losses, ties = wins + (d > 0), losses + (d < 0), ties + (d == 0)
    out["paired"] = {
        "keys": wins + losses + ties,
        "wins": wins,
        "losses": losses,
        "ties": ties,
        "p_worse": round(mcnemar_p(losses, wins), 4),
        "p_better": round(mcnemar_p(wins, losses), 4),
    }
    return out
