"""Check family 3: next-token distributions over every position of prompt + answer, against the
type's band (the validation probes; the edge cases apart, as one long probe would outweigh all
others)."""

from __future__ import annotations

from typing import Any

import numpy as np

from edgeft.core.formats import Band
from edgeft.judge.kl import distinct_contexts, kl_stats, only, summarise
from edgeft.pipeline.verify.checks import Checks
from edgeft.pipeline.verify.probes import Probe, Reference
from edgeft.runtimes import Runtime


def next_token(
    rt: Runtime, ref: Reference, probes: list[Probe], band: Band, checks: Checks
) -> dict[str, Any]:
    """Mean and p99 KL and top-1 agreement within the band; returns the numbers for the report."""
    distinct = distinct_contexts(ref.full_ids)  # the shared system prompt counts once
    per_probe = [
        only(kl_stats(ref.logits[i], rt.logits(ref.full_ids[i])), distinct[i]) for i in range(len(probes))
    ]
    checks.kl_curve = np.concatenate([s["kl"] for s in per_probe])
    main = [i for i, p in enumerate(probes) if not p.edge]
    edge = [i for i, p in enumerate(probes) if p.edge]
    numbers: dict[str, Any] = summarise([per_probe[i] for i in main])
    top1 = numbers["top1"]
    worst = main[int(np.argmax([per_probe[i]["kl"].max(initial=0.0) for i in main]))]
    checks.add(
        "kl_mean",
        numbers["kl_mean"] <= band.kl_mean,
        f"mean KL {numbers['kl_mean']:.3g} (limit {band.kl_mean:g}) over {numbers['positions']} positions",
        value=numbers["kl_mean"],
        limit=band.kl_mean,
    )
    checks.add(
        "kl_p99",
        numbers["kl_p99"] <= band.kl_p99,
        f"p99 KL {numbers['kl_p99']:.3g} (limit {band.kl_p99:g}); max {numbers['kl_max']:.3g} at probe "
        f"{probes[worst].name}",
        value=numbers["kl_p99"],
        limit=band.kl_p99,
    )
    checks.add(
        "top1",
        top1 >= band.top1,
        f"top-1 agreement {top1:.4f} (minimum {band.top1:g})",
        value=top1,
        limit=band.top1,
    )
    if edge:
        e = summarise([per_probe[i] for i in edge])
        numbers.update({f"edge_{k}": v for k, v in e.items()})
        worst_edge = edge[
            int(np.argmax([per_probe[i]["kl"].mean() if per_probe[i]["kl"].size else 0.0 for i in edge]))
        ]
        # The type's band on the edge cases' own aggregate: mean KL and top-1. A single position
        # deep in the near-context probe is not gated (reduced-precision accumulation), its mean is.
        ok = e["kl_mean"] <= band.edge_limit and e["top1"] >= band.edge_top1_limit
        checks.add(
            "edge_kl",
            ok,
            f"edge cases: mean KL {e['kl_mean']:.3g} (limit {band.edge_limit:g}), top-1 {e['top1']:.4f} "
            f"(minimum {band.edge_top1_limit:g}), max KL {e['kl_max']:.3g}; worst probe {probes[worst_edge].name} "
            f"(mean KL {np.mean(per_probe[worst_edge]['kl']):.3g})",
            value=e["kl_mean"],
            top1=e["top1"],
        )
    return numbers
