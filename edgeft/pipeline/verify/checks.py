"""One artifact's check results, by name: what every check family adds to."""

from __future__ import annotations

from typing import Any

import numpy as np

from edgeft.pipeline.verify.report import Check


class Checks:
    """Collects pass/fail results for one artifact."""

    def __init__(self, artifact: str):
        self.artifact = artifact
        self.results: dict[str, Check] = {}
        self.kl_curve: np.ndarray | None = None  # KL at every position of the probe set

    def add(self, check: str, passed: bool, detail: str, **numbers: Any) -> None:
        self.results[check] = Check(bool(passed), detail, numbers)

    @property
    def failures(self) -> list[str]:
        return [f"{self.artifact}: {name}: {r.detail}" for name, r in self.results.items() if not r.passed]
