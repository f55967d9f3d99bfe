"""What `edgeft registry list/show/log` print: tables over the registry's index and event log."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from edgeft.registry.compare import compare, served_ratings
from edgeft.registry.index import ModelEntry, RegistryIndex, Version
from edgeft.registry.routing import Ref
from edgeft.registry.store import PRODUCTION, Registry


def _table(header: list[str], rows: list[list[Any]]) -> str:
    cells = [header, *[[("" if c is None else str(c)) for c in row] for row in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells)


def _split(model: ModelEntry) -> str:
    s = model.split
    if not s:
        return "-"
    return f"{s.id}: " + ", ".join(f"{a.label}={a.version} {a.weight / 100:g}%" for a in s.arms)


def list_table(index: RegistryIndex) -> str:
    if not index.models:
        return "no models registered (edgeft registry add DIST)"
    rows = [
        [
            name,
            len(m.versions),
            m.aliases.get(PRODUCTION, "-"),
            m.aliases.get("candidate", "-"),
            _split(m),
        ]
        for name, m in sorted(index.models.items())
    ]
    return _table(["model", "versions", "production", "candidate", "split"], rows)


def _score(version: Version, metric: str) -> str:
    s = version.scores.get("fine-tuned", {}).get(metric)
    return "-" if s is None else f"{s:.3g}"


def show(
    reg: Registry, ref: Ref, against: Ref | None, as_json: bool, served: list[Path] | None = None
) -> str:
    index = reg.index()
    if ref.version is None and ref.alias is None:
        model = reg.model(index, ref.name)
        if as_json:
            return json.dumps(model.to_json(), indent=2, ensure_ascii=False)
        aliases = {v: a for a, v in model.aliases.items()}
        table = [
            [
                v.version,
                v.status,
                aliases.get(v.version, ""),
                v.registered,
                v.user,
                _score(v, "exact_match"),
                _score(v, "chrf"),
                len(v.artifacts),
                v.reason or "",
            ]
            for v in model.versions.values()
        ]
        return "\n".join(
            [
                _table(
                    [
                        "version",
                        "status",
                        "alias",
                        "registered",
                        "user",
                        "exact",
                        "chrF",
                        "artifacts",
                        "reason",
                    ],
                    table,
                ),
                f"production history: {' → '.join(map(str, model.history)) or '-'}",
                f"split: {_split(model)}",
            ]
        )
    model, version = reg.resolve(ref, index)
    other = None
    if against is not None:
        other = reg.resolve(against, index)[1]
    else:
        number = model.aliases.get(PRODUCTION)
        if number == version.version or number is None:
            number = version.lineage.get("parent_version")
        other = model.versions.get(int(number)) if number is not None else None
    rows = compare(version, other) if other else []
    said = (
        served_ratings(served, f"{ref.name}:{version.version}", f"{ref.name}:{other.version}")
        if served and other
        else None
    )
    if as_json:
        return json.dumps(
            {
                "version": version.to_json(),
                "against": other and other.version,
                "comparison": rows,
                **({"served": said} if said else {}),
            },
            indent=2,
            ensure_ascii=False,
        )
    lin = version.lineage
    training = lin.get("training") or {}
    out: list[str] = [
        f"{ref.name}:{version.version}  status {version.status}  registered {version.registered} by "
        f"{version.user}" + (f"  ({version.reason})" if version.reason else ""),
        f"base model {lin.get('base_model')}; data sha256 {str(lin.get('dataset_sha256'))[:16]}… "
        f"({lin.get('train_rows')} train / {lin.get('validation_rows')} validation rows); config "
        f"{str(lin.get('config_sha256'))[:12]}…; adapter {str(lin.get('adapter_sha256'))[:12]}…; parent version "
        f"{lin.get('parent_version') or '-'}",
        f"training: {training.get('steps')} steps, validation loss {training.get('base_val_loss')} "
        f"(base) → {training.get('val_loss')}",
        "",
        _table(
            ["artifact", "type", "MB", "sha256", "KL mean", "top-1", "verify"],
            [
                [
                    a.name,
                    a.type,
                    f"{(a.bytes or 0) / 1e6:.2f}",
                    (a.sha256 or "(folder)")[:12],
                    _num(a.verify.get("kl_mean")),
                    _num(a.verify.get("top1")),
                    "pass" if a.verify.get("passed") else "FAIL",
                ]
                for a in version.artifacts
            ],
        ),
    ]
    if other:
        out += [
            "",
            f"compared with {ref.name}:{other.version} ({other.status}):",
            _table(
                ["", "model", "metric", f"v{version.version}", f"v{other.version}", "change"],
                [
                    [r["what"], r["model"], r["metric"], _num(r["new"]), _num(r["old"]), _change(r)]
                    for r in rows
                ],
            ),
        ]
    if said:
        out += ["", *_served_lines(said)]
    return "\n".join(out)


def _served_lines(said: dict[str, Any]) -> list[str]:
    p = said["paired"]
    rows = [
        [s["version"], s["ratings"], _num(s["mean"]), _num(s["share_4_or_5"])]
        for s in (said["new"], said["old"])
    ]
    return [
        "served ratings (edgeft serve's logs):",
        _table(["version", "ratings", "mean", "4 or 5"], rows),
        f"paired (same request key rated both): {p['keys']} keys, {p['wins']} better, {p['losses']} worse, "
        f"{p['ties']} equal; sign test p(new worse) = {p['p_worse']:.3g}, p(new better) = {p['p_better']:.3g}",
    ]


def _num(x: Any) -> str:
    return "-" if x is None else f"{x:.4g}"


def _change(row: dict[str, Any]) -> str:
    d = row["new"] - row["old"]
    if abs(d) < 1e-12:
        return "="
    better = (d > 0) == row["higher_is_better"]
    return f"{d:+.3g} ({'better' if better else 'worse'})"


def event_line(e: dict[str, Any]) -> str:
    what = {
        k: v
        for k, v in e.items()
        if k not in ("seq", "time", "user", "event", "model", "reason") and v is not None
    }
    detail = " ".join(
        f"{k}={json.dumps(v, ensure_ascii=False) if isinstance(v, (list, dict)) else v}"
        for k, v in what.items()
    )
    return f"{e['seq']:>4}  {e['time']}  {e.get('user')}  {e['event']:<9} {e.get('model')}  {detail}" + (
        f"  — {e['reason']}" if e.get("reason") else ""
    )
