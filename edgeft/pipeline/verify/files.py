"""Checks on what an artifact ships beside its weights: the GGUF's hyperparameters and lossless
weights against the reference files, and the plain prompt pieces for Java."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgeft.core import stages
from edgeft.core.manifest import Artifact, Stage
from edgeft.judge import filecheck
from edgeft.pipeline.verify.checks import Checks
from edgeft.pipeline.verify.probes import Probe, Reference, common_prefix


def file_checks(path: Path, model_dir: Path, gguf_type: str, checks: Checks) -> dict[str, Any]:
    """The GGUF's hyperparameters, and for lossless types its weights, against the reference files."""
    found: dict[str, Any] = {}
    for name, problems, numbers in filecheck.check(path, model_dir, gguf_type):
        if name == "hyperparameters":
            passed = "GGUF hyperparameters match the reference config"
        elif "note" in numbers:  # an architecture gguf-py has no tensor names for: nothing compared
            passed = numbers["note"]
        else:
            passed = (
                f"{numbers['weights_compared']} tensors equal the reference within {gguf_type} rounding "
                f"(max relative error {numbers['weights_max_rel_error']:.2g})"
            )
        checks.add(name, not problems, "; ".join(problems) or passed, **numbers)
        found.update(numbers)
    return found


def prompt_format_check(
    stage: Stage, art: Artifact, ref: Reference, probes: list[Probe], checks: Checks
) -> None:
    """The plain prompt pieces shipped for Java (edgeft.models.prompt_format) render every probe
    conversation exactly as the reference's template does; in a dist, so does the kit's file."""
    from edgeft.models import prompt_format

    fmt = art.prompt_format
    if fmt is None:
        checks.add(
            "prompt_format",
            True,
            f"no plain prompt format ({art.get('prompt_format_note')}): the Java "
            f"kit falls back to llama.cpp's built-in template matcher, which this check cannot vouch for",
        )
        return
    problems = []
    shipped = stage.path / "java" / "prompt-format.properties"
    if (
        stage.kind == stages.DIST
        and shipped.is_file()
        and prompt_format.from_properties(shipped.read_text()) != fmt
    ):
        problems.append("java/prompt-format.properties differs from the artifact's prompt_format")
    chat = [i for i, p in enumerate(probes) if p.messages is not None]
    for i in chat:
        try:
            got = prompt_format.render(fmt, probes[i].conversation)
        except (prompt_format.NoFormat, KeyError) as e:
            problems.append(f"{probes[i].name}: cannot render: {e}")
            break
        if got != ref.prompts[i]:
            at = common_prefix(got, ref.prompts[i])
            problems.append(
                f"{probes[i].name}: the plain prompt format differs from the template at char {at}: "
                f"{got[at : at + 30]!r} vs reference {ref.prompts[i][at : at + 30]!r}"
            )
            break
    checks.add(
        "prompt_format",
        not problems,
        "; ".join(problems)
        or f"the Java kit's prompt pieces render the reference prompt ({len(chat)} conversations)",
    )
