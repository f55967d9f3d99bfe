"""Check family 4: greedy generations reproduce the reference's, stop where it stops, and (a model
trained on tool rows) call the tools it calls."""

from __future__ import annotations

from typing import Any

import numpy as np

from edgeft.core.formats import Band
from edgeft.data.tools import parse
from edgeft.pipeline.verify.checks import Checks
from edgeft.pipeline.verify.probes import Probe, Reference, common_prefix
from edgeft.runtimes import Runtime


def greedy(
    rt: Runtime, ref: Reference, probes: list[Probe], band: Band, checks: Checks, max_new_tokens: int
) -> dict[str, Any]:
    """Identical generations (lossless types) or a long enough matching prefix (quantized)."""
    fractions, stop_mismatch, first_diff = [], [], None
    calls: list[tuple[str, bool]] = []  # probes the reference answers with tool calls: same calls here?
    for i, p in enumerate(probes):
        want, want_stop = ref.generations[i]
        got, got_stop = rt.generate(ref.prompt_ids[i], max_new_tokens)
        if not p.edge:
            wanted = parse(rt.detokenize(want))
            if wanted.calls:
                calls.append((p.name, got == want or parse(rt.detokenize(got)).same_calls(wanted)))
        n = common_prefix(got, want)
        full = n == len(want) == len(got)
        if not p.edge:
            fractions.append(1.0 if full else n / max(len(want), 1))
        if full and got_stop != want_stop:
            stop_mismatch.append(p.name)
        if not full and first_diff is None and not p.edge:
            first_diff = f"{p.name} diverges at token {n} of {len(want)}"
    gen = float(np.mean(fractions))
    checks.add(
        "generation",
        gen >= band.gen_prefix,
        f"mean matching prefix {gen:.3f} of the reference (minimum {band.gen_prefix:g})"
        + (f"; {first_diff}" if first_diff else ""),
        value=gen,
        limit=band.gen_prefix,
    )
    checks.add(
        "stops",
        not stop_mismatch,
        "stops where the reference stops"
        if not stop_mismatch
        else f"same tokens but a different stop on {', '.join(stop_mismatch)} "
        f"(the runtime does not treat the reference's stop token as end of generation)",
    )
    if calls:
        share = sum(same for _, same in calls) / len(calls)
        differ = [name for name, same in calls if not same]
        checks.add(
            "tool_calls",
            share >= band.gen_prefix,
            f"{len(calls) - len(differ)} of {len(calls)} probes the reference answers with tool calls parse to "
            f"its calls (function and arguments; minimum share {band.gen_prefix:g})"
            + (f"; differ: {', '.join(differ[:5])}" if differ else ""),
            value=share,
            limit=band.gen_prefix,
        )
    return {"generation_prefix": gen}
