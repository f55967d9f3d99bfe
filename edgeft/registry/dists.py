"""What a registered version takes from a dist, and what registering writes into it: the copy
(every listed byte checked), the registry block stamped into its manifests and model card, and
the lineage and artifact entries the index keeps."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

from edgeft.core.errors import InputError
from edgeft.core.fileio import copy_file, hash_json, inside, sha256_file
from edgeft.core.manifest import MANIFEST, Artifact, Stage


def stamp(folder: Path, info: dict[str, Any]) -> None:
    """Write the registry block (version, status, …) into a dist's edgeft.json and manifest.json,
    and a "Version" section into its model card; the card's size and sha256 follow in both tables."""
    card = folder / "README.md"
    entry = None
    if card.is_file():  # a dist without a card gets none: every file of a dist is in its table
        lines = card.read_text(encoding="utf-8").split("\n")
        start = next((i for i, line in enumerate(lines) if line == "## Version"), None)
        if start is not None:
            end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
            del lines[start:end]
        at = next((i for i, line in enumerate(lines) if line.startswith("## ")), len(lines))
        lines[at:at] = [
            "## Version",
            f"Version {info['version']} of `{info['name']}` in an edgeft registry: status "
            f"**{info['status']}** as of {info['as_of']}"
            + (f" (registered {info['registered']})" if info.get("registered") else "")
            + ". The registry's `index.json` is authoritative for the current status.",
            "",
        ]
        card.write_text("\n".join(lines), encoding="utf-8")
        entry = {"bytes": card.stat().st_size, "sha256": sha256_file(card)}
    for name in (MANIFEST, "manifest.json"):
        path = folder / name
        data = json.loads(path.read_text(encoding="utf-8"))
        data["registry"] = info
        if entry:
            data["files"] = [
                dict(f, bytes=entry["bytes"], sha256=entry["sha256"]) if f["path"] == "README.md" else f
                for f in data.get("files", [])
            ]
            if "stat" in data:
                data["stat"]["README.md"] = [card.stat().st_size, card.stat().st_mtime_ns]
        path.write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")


def copy_dist(src: Path, dst: Path, files: list[dict[str, Any]], changed: str) -> None:
    """Copy a dist's listed files and its two manifests (unless listed), checking each listed
    file's sha256 on the way (InputError `<file>: <changed>` on the first that differs)."""
    for f in files:
        if copy_file(inside(src, f["path"]), dst / f["path"]) != f["sha256"]:
            raise InputError(f"{src / f['path']}: {changed}")
    for name in {MANIFEST, "manifest.json"} - {f["path"] for f in files}:
        copy_file(src / name, dst / name)


def lineage(dist: dict[str, Any], parent: int | None) -> dict[str, Any]:
    lin = dist.get("lineage") or {}
    data = lin.get("dataset") or {}
    adapter = (lin.get("adapter") or {}).get("files")
    training = lin.get("training") or {}
    return {
        "base_model": lin.get("base_model") or dist.get("base_model"),
        "dataset_sha256": data.get("train_sha256"),
        "train_rows": data.get("train_rows"),
        "validation_rows": data.get("validation_rows"),
        "config_sha256": hash_json(dist.get("config")),
        "adapter_sha256": hash_json(adapter) if adapter else None,
        "parent_version": parent,
        "edgeft_version": dist.get("edgeft_version"),
        "training": {k: training.get(k) for k in ("steps", "val_loss", "base_val_loss")},
    }


def index_artifacts(dist: Stage) -> list[Artifact]:
    """What the index lists per artifact: the dist entry's identity and checksums (a folder's
    files), its type and runtime, verify's summary and its bits per weight."""
    keep = ("type", "runtime", "verify", "bits_per_weight")
    return [replace(a, info={k: a.info[k] for k in keep if k in a.info}) for a in dist.artifacts]
