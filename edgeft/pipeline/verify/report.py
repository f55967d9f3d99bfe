"""The verify report: what verify hands package and the registry (`VerifyReport`, one `Verdict`
per artifact, one `Check` per check family), its Markdown, and the plot of KL divergence per
position. `to_json` writes report.json as it has always been; `from_json` reads reports of
earlier edgeft versions too (fields they lack are None or empty)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgeft.core.errors import InputError

# The numbers of a verdict that a dist's manifest and model card carry.
SUMMARY_NUMBERS = ("kl_mean", "kl_p99", "kl_max", "top1", "max_dlogit", "generation_prefix")


@dataclass
class Check:
    """One check family's result for one artifact."""

    passed: bool
    detail: str
    extra: dict[str, Any] = field(default_factory=dict)  # what the check measured (stop ids, skipped, ...)

    @property
    def skipped(self) -> bool:
        """Not run on this machine (a tool it needs is missing): not counted as passed."""
        return bool(self.extra.get("skipped"))

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Check:
        return cls(
            bool(data.get("passed")),
            str(data.get("detail", "")),
            {k: v for k, v in data.items() if k not in ("passed", "detail")},
        )

    def to_json(self) -> dict[str, Any]:
        return {"passed": self.passed, "detail": self.detail, **self.extra}


@dataclass
class Verdict:
    """One artifact's verdict: its checks, the numbers behind them, and the checksums of the bytes
    that were judged (package ships only those)."""

    file: str
    type: str
    runtime: str | None
    band: dict[str, Any] | None
    numbers: dict[str, Any]
    checks: dict[str, Check]
    passed: bool
    sha256: str | None = None
    files: list[dict[str, Any]] | None = None
    second_opinion: dict[str, Any] | None = None  # llama-perplexity's KL beside edgeft's (verify/second.py)

    @property
    def stop_ids(self) -> list[int]:
        """The token ids this artifact's runtime ends generation on (its special_tokens check)."""
        check = self.checks.get("special_tokens")
        return list(check.extra.get("stop") or []) if check else []

    def add_check(self, check: str, passed: bool, detail: str) -> None:
        """Add a check decided after the artifact's own checks (the second opinion)."""
        self.checks[check] = Check(passed, detail)
        self.passed = self.passed and passed

    def summary(self) -> dict[str, Any]:
        """What a dist's manifest carries for the artifact: passed, and the headline numbers."""
        return {"passed": self.passed, **{k: self.numbers.get(k) for k in SUMMARY_NUMBERS}}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Verdict:
        return cls(
            file=str(data.get("file")),
            type=str(data.get("type")),
            runtime=data.get("runtime"),
            band=data.get("band"),
            numbers=dict(data.get("numbers") or {}),
            checks={k: Check.from_json(v) for k, v in (data.get("checks") or {}).items()},
            passed=bool(data.get("passed")),
            sha256=data.get("sha256"),
            files=data.get("files"),
            second_opinion=data.get("second_opinion"),
        )

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "file": self.file,
            "type": self.type,
            "runtime": self.runtime,
            "band": self.band,
            "numbers": self.numbers,
            "checks": {k: c.to_json() for k, c in self.checks.items()},
            "passed": self.passed,
        }
        out.update(
            {
                k: v
                for k, v in (
                    ("sha256", self.sha256),
                    ("files", self.files),
                    ("second_opinion", self.second_opinion),
                )
                if v is not None
            }
        )
        return out


@dataclass
class VerifyReport:
    """report.json: every artifact's verdict against the reference, the stop tokens in play, and
    the failures that decided the stage."""

    reference: str
    probes: list[str]
    context_tokens: int | None
    artifacts: dict[str, Verdict]
    passed: bool = False
    failures: list[str] = field(default_factory=list)
    # reference: ids the reference stopped on; tokens: id (as a string) -> token text
    stops: dict[str, Any] | None = None
    dist_files: dict[str, Any] | None = None  # a dist's own file check, when a dist was verified

    def verdict(self, name: str) -> Verdict | None:
        return self.artifacts.get(name)

    def stop_strings(self, name: str) -> list[str]:
        """The artifact's stop tokens as text; every token the reference stopped on must be among them."""
        if self.stops is None or self.context_tokens is None:
            raise InputError(
                "the verify report was made by an older edgeft (no stop-token record): re-run "
                "`edgeft verify` (or `edgeft build`)"
            )
        verdict = self.artifacts.get(name)
        ids = verdict.stop_ids if verdict else []
        missing = [i for i in self.stops["reference"] if i not in ids]
        if missing:
            raise InputError(
                f"{name}: the reference stops on token(s) {missing} that this artifact does not treat "
                f"as end of generation; verify should have failed it"
            )
        return [self.stops["tokens"][str(i)] for i in ids if str(i) in self.stops["tokens"]]

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> VerifyReport:
        return cls(
            reference=str(data.get("reference")),
            probes=list(data.get("probes") or []),
            context_tokens=data.get("context_tokens"),
            artifacts={k: Verdict.from_json(v) for k, v in (data.get("artifacts") or {}).items()},
            passed=bool(data.get("passed")),
            failures=list(data.get("failures") or []),
            stops=data.get("stops"),
            dist_files=data.get("dist_files"),
        )

    @classmethod
    def read(cls, path: Path) -> VerifyReport:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError, RecursionError) as e:
            raise InputError(
                f"{path}: not a readable verify report ({e.__class__.__name__}); re-run `edgeft verify`"
            ) from None
        if not isinstance(data, dict) or not isinstance(data.get("artifacts"), dict):
            raise InputError(f"{path}: not a verify report (no artifacts); re-run `edgeft verify`")
        return cls.from_json(data)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "reference": self.reference,
            "probes": self.probes,
            "context_tokens": self.context_tokens,
            "artifacts": {k: v.to_json() for k, v in self.artifacts.items()},
        }
        if self.stops is not None:
            out["stops"] = self.stops
        if self.dist_files is not None:
            out["dist_files"] = self.dist_files
        out.update(passed=self.passed, failures=self.failures)
        return out


def markdown_report(report: VerifyReport) -> str:
    lines = [
        "# edgeft verify report",
        "",
        f"Reference: `{report.reference}` (transformers, fp32); {len(report.probes)} probes.",
        "",
        "| artifact | runtime | KL mean | KL p99 | KL max | top-1 | max Δlogit | gen prefix | result |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, a in report.artifacts.items():
        cells = " | ".join(f"{a.numbers[k]:.3g}" if k in a.numbers else "–" for k in SUMMARY_NUMBERS)
        lines.append(f"| {name} | {a.runtime} | {cells} | {'pass' if a.passed else 'FAIL'} |")
    second = {n: a.second_opinion for n, a in report.artifacts.items() if a.second_opinion is not None}
    if second:
        first = next(iter(second.values()))
        lines += [
            "",
            f"Second opinion: llama.cpp's llama-perplexity `--kl-divergence` against llama.cpp's own f32 "
            f"GGUF of the reference, and edgeft on the same {first['positions']} positions ({first['chunks']} "
            f"chunks of {first['context']} tokens of the held-out conversations, second halves):",
            "",
            "| artifact | llama-perplexity KL mean | edgeft KL mean | p99 (theirs / ours) | top-1 (theirs / ours) "
            "| agree |",
            "|---|---|---|---|---|---|",
        ]
        for n, r in second.items():
            t, o = r["llama_perplexity"], r["edgeft"]
            lines.append(
                f"| {n} | {t['kl_mean']:.4g} | {o['kl_mean']:.4g} | {t.get('kl_p99', float('nan')):.3g} / "
                f"{o['kl_p99']:.3g} | {t.get('top1', float('nan')):.3f} / {o['top1']:.3f} | "
                f"{'yes' if r['agree'] else 'NO'} |"
            )
    lines += ["", "**Passed.**" if report.passed else "**Failed:**", ""]
    lines += [f"- {f}" for f in report.failures]
    skipped = sorted(
        {
            f"{name}: {c.detail}"
            for a in report.artifacts.values()
            for name, c in a.checks.items()
            if c.skipped
        }
    )
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
