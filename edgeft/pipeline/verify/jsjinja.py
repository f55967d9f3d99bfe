"""Check family: the artifact's chat template rendered by @huggingface/jinja, the JavaScript Jinja
engine LM Studio and transformers.js use, gives the reference's prompt. That engine rejects some
templates Python's jinja2 accepts (and renders some differently); no peer checks this.

Needs Node.js and the package, which set-up installs into vendor/js (EDGEFT_JS overrides); without
them the check is reported as skipped, never as passed.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from importlib import resources
from pathlib import Path

from edgeft.core.paths import js_dir
from edgeft.pipeline.verify.checks import Checks
from edgeft.pipeline.verify.probes import Probe, Reference, common_prefix
from edgeft.runtimes import Runtime

PACKAGE = "@huggingface/jinja"


def engine() -> tuple[list[str], Path] | str:
    """(node command, the package's ES module), or why the check cannot run here."""
    node = shutil.which("node")
    module = js_dir() / "node_modules" / "@huggingface" / "jinja" / "dist" / "index.js"
    if node is None:
        return "no Node.js on this machine (install nodejs, then scripts/setup.sh)"
    if not module.is_file():
        return f"{PACKAGE} is not installed in {js_dir()} (scripts/setup.sh installs it)"
    return [node, str(resources.files(__package__).joinpath("jinja.mjs"))], module


def render(jobs: list[dict], timeout: float = 60) -> list[dict]:
    """Render each {template, context} with the JS engine: [{"text"} or {"error"}]."""
    found = engine()
    if isinstance(found, str):
        raise RuntimeError(found)
    command, module = found
    done = subprocess.run(
        command,
        input=json.dumps({"module": str(module), "jobs": jobs}),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if done.returncode != 0:
        raise RuntimeError(f"node failed: {done.stderr.strip()[-300:]}")
    return json.loads(done.stdout)


def js_template(rt: Runtime, ref: Reference, probes: list[Probe], checks: Checks) -> None:
    """Every probe conversation through the artifact's own template in the JS engine equals the
    reference's prompt (what transformers renders with the fine-tuned model's template)."""
    if rt.template is None:
        return  # no template in the artifact: the chat_template check reports it
    found = engine()
    if isinstance(found, str):
        checks.add("js_template", True, f"skipped: {found}", skipped=True)
        return
    chat = [i for i, p in enumerate(probes) if p.messages is not None]
    context = {"add_generation_prompt": True, **rt.template_tokens()}
    try:
        results = render(
            [
                {"template": rt.template, "context": {**context, "messages": probes[i].conversation}}
                for i in chat
            ]
        )
    except (RuntimeError, subprocess.TimeoutExpired, ValueError) as e:
        checks.add("js_template", False, f"could not run {PACKAGE}: {e}")
        return
    for i, r in zip(chat, results, strict=True):
        if "error" in r:
            checks.add(
                "js_template",
                False,
                f"{PACKAGE} (LM Studio, transformers.js) cannot render the template: {r['error'][:200]}",
            )
            return
        if r["text"] != ref.prompts[i]:
            at = common_prefix(r["text"], ref.prompts[i])
            checks.add(
                "js_template",
                False,
                f"{PACKAGE} (LM Studio, transformers.js) renders {probes[i].name} "
                f"differently at char {at}: {r['text'][at : at + 30]!r} vs reference "
                f"{ref.prompts[i][at : at + 30]!r}",
            )
            return
    checks.add("js_template", True, f"{PACKAGE} renders the reference prompt ({len(chat)} conversations)")
