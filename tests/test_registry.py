"""The model registry on small hand-made dists (fast): routing, promotion rules, rollback, the event
log, concurrent writers, export. The same flow on real builds is tests/test_registry_scenario.py."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import on_disk

from edgeft.cli import cli
from edgeft.core import stages
from edgeft.core.errors import InputError, RegistryRefused
from edgeft.core.fileio import file_table
from edgeft.core.manifest import StageWriter
from edgeft.judge.integrity import dist_problems
from edgeft.registry.index import BUCKETS, Arm, Split
from edgeft.registry.routing import Ref, assign, bucket
from edgeft.registry.store import Registry
from edgeft.ship.javakit import ROUTING_VECTORS

VECTORS = Path(__file__).resolve().parent.parent / "edgeft" / "ship" / "javakit" / ROUTING_VECTORS


def make_dist(
    path: Path,
    name: str = "m",
    exact: float = 0.5,
    chrf: float = 50.0,
    seed: str = "a",
    passed: bool = True,
    results: dict | None = None,
) -> Path:
    """A small but complete dist: one GGUF-named file, a model card, both manifests (as package
    writes them), and `results` as its eval/results.json when given."""
    with StageWriter(
        path,
        stages.DIST,
        config={"name": name, "seed": seed},
        inputs_hash=hashlib.sha256(seed.encode()).hexdigest(),
        base_model="tiny:micro",
    ) as w:
        if results is not None:
            (w.tmp / "eval").mkdir()
            (w.tmp / "eval" / "results.json").write_text(json.dumps(results))
        (w.tmp / "gguf").mkdir()
        (w.tmp / "gguf" / f"{name}-q8_0.gguf").write_bytes(b"GGUF" + seed.encode() * 1000)
        (w.tmp / "README.md").write_text(f"# {name}\n\nA model.\n\n## Training\n- steps\n")
        art = w.add_artifact(
            "gguf-q8_0",
            f"gguf/{name}-q8_0.gguf",
            "gguf",
            type="q8_0",
            runtime="llama.cpp",
            verify={"passed": passed, "kl_mean": 0.001, "top1": 0.99},
        )
        scores = {"exact_match": exact, "chrf": chrf}
        w.extra.update(
            name=name,
            lineage={
                "base_model": "tiny:micro",
                "dataset": {"train_sha256": "d" * 64},
                "adapter": {"files": [{"path": "a", "sha256": seed}]},
                "training": {"steps": 3},
            },
            files=file_table(w.tmp),
            verify={"passed": passed, "failures": []},
            evaluation={
                "passed": passed,
                "scores": {"fine-tuned": scores, "base": {"exact_match": 0.0}, "gguf-q8_0": scores},
            },
        )
        assert art.sha256
        (w.tmp / "manifest.json").write_text(json.dumps(w.manifest(), indent=2, default=str) + "\n")
        return w.publish().path


@pytest.fixture
def reg(tmp_path: Path) -> Registry:
    return Registry(tmp_path / "registry")


def test_routing_follows_the_documented_hash_and_the_shipped_vectors() -> None:
    vectors = json.loads(VECTORS.read_text(encoding="utf-8"))
    assert vectors["buckets"] == BUCKETS == 10000
    for v in vectors["bucket"]:
        # The formula as the README and the Java kit state it, written out independently here.
        digest = hashlib.sha256((v["split_id"] + ":" + v["key"]).encode("utf-8")).digest()
        assert (
            int.from_bytes(digest[:8], "big", signed=False) % 10000
            == v["bucket"]
            == bucket(v["split_id"], v["key"])
        )
    for split in vectors["splits"]:
        for r in split["routes"]:
            assert assign(Split.from_json(split).arms, bucket(split["id"], r["key"])).version == r["version"]
    assert len({v["bucket"] for v in vectors["bucket"]}) > len(vectors["bucket"]) * 0.9  # not a constant


def test_a_split_sends_its_share_and_growing_it_keeps_assigned_keys() -> None:
    arms = lambda share: [Arm("production", 1, BUCKETS - share), Arm("candidate", 2, share)]  # noqa: E731
    keys = [f"req-{i}" for i in range(10_000)]
    at10 = [assign(arms(1000), bucket("m/1", k)).version for k in keys]
    at20 = [assign(arms(2000), bucket("m/1", k)).version for k in keys]
    # Binomial(10000, 0.1) has a standard deviation of 30 keys: ±1% is more than 3 of them.
    assert 900 <= at10.count(2) <= 1100
    assert 1900 <= at20.count(2) <= 2100
    assert all(b == 2 for a, b in zip(at10, at20, strict=True) if a == 2)


def test_lifecycle_register_promote_split_promote_rollback(tmp_path: Path, reg: Registry) -> None:
    d1 = make_dist(tmp_path / "d1", exact=0.4, seed="a")
    d2 = make_dist(tmp_path / "d2", exact=0.6, seed="b")
    assert reg.add(d1, "first") == ("m", 1, True)
    assert reg.add(d1) == ("m", 1, False)  # the same dist again is the same version
    assert reg.add(d2) == ("m", 2, True)
    index = on_disk(reg)
    v2 = index["models"]["m"]["versions"]["2"]
    assert v2["lineage"]["parent_version"] == 1 and v2["status"] == "staging"
    assert (
        v2["artifacts"][0]["sha256"]
        == hashlib.sha256((reg.root / v2["path"] / "gguf/m-q8_0.gguf").read_bytes()).hexdigest()
    )
    stored = reg.root / v2["path"]
    assert not dist_problems(stages.read(stored, stages.DIST))
    assert json.loads((stored / "manifest.json").read_text())["registry"]["version"] == 2
    assert "## Version" in (stored / "README.md").read_text()
    with pytest.raises(InputError, match="no production version"):
        reg.route("m", "k")

    reg.promote(Ref.parse("m:1"))
    reg.promote(Ref.parse("m:2"), "candidate")
    split = reg.split("m", ["production=90", "candidate=10"])
    assert split is not None and [a.version for a in split.arms] == [1, 2]
    assert reg.split("m", ["production=80", "candidate=20"]).id == split.id  # weights only: same id
    assert {reg.route("m", f"r{i}")["version"] for i in range(200)} == {1, 2}

    reg.promote(Ref.parse("m@candidate"))
    m = on_disk(reg)["models"]["m"]
    assert m["aliases"] == {"production": 2} and m["split"] is None and m["history"] == [1, 2]
    assert [m["versions"][v]["status"] for v in ("1", "2")] == ["archived", "production"]

    assert reg.rollback("m", "bad answers") == (2, 1)
    m = on_disk(reg)["models"]["m"]
    assert m["aliases"]["production"] == 1 and [m["versions"][v]["status"] for v in ("1", "2")] == [
        "production",
        "archived",
    ]
    with pytest.raises(RegistryRefused, match="no earlier production"):
        reg.rollback("m")
    events = reg.events("m")
    assert [e["event"] for e in events] == [
        "register",
        "register",
        "promote",
        "alias",
        "split",
        "split",
        "promote",
        "archive",
        "split-end",
        "rollback",
        "archive",
    ]
    assert [e["seq"] for e in events] == list(range(1, 12)) and on_disk(reg)["last_event"] == 11
    assert events[0]["reason"] == "first" and events[9]["reason"] == "bad answers"
    assert all(e["user"] and e["time"].endswith("Z") for e in events)


def test_promotion_is_gated_on_scores_and_forcing_is_recorded(tmp_path: Path, reg: Registry) -> None:
    reg.add(make_dist(tmp_path / "good", exact=0.8, chrf=70, seed="a"))
    reg.add(make_dist(tmp_path / "worse", exact=0.5, chrf=71, seed="b"))
    reg.promote(Ref.parse("m:1"))
    result = CliRunner().invoke(cli, ["registry", "promote", "m:2", "--registry", str(reg.root)])
    assert result.exit_code == 11, result.output
    assert "fine-tuned exact_match 0.5 < 0.8" in result.output and "--force" in result.output
    assert on_disk(reg)["models"]["m"]["aliases"]["production"] == 1  # nothing changed
    result = CliRunner().invoke(cli, ["registry", "promote", "m:2", "--force", "--registry", str(reg.root)])
    assert result.exit_code == 5 and "--reason" in result.output
    result = CliRunner().invoke(
        cli,
        [
            "registry",
            "promote",
            "m:2",
            "--force",
            "--reason",
            "format matters more",
            "--registry",
            str(reg.root),
        ],
    )
    assert result.exit_code == 0, result.output
    promote = [e for e in reg.events() if e["event"] == "promote"][-1]
    assert promote["forced"] and promote["reason"] == "format matters more" and promote["regressions"]
    shown = CliRunner().invoke(
        cli, ["registry", "show", "m:2", "--against", "m:1", "--registry", str(reg.root)]
    )
    assert shown.exit_code == 0 and "worse" in shown.output and "better" in shown.output


def test_refusals_and_bad_input(tmp_path: Path, reg: Registry) -> None:
    reg.add(make_dist(tmp_path / "a", seed="a"))
    reg.add(make_dist(tmp_path / "b", seed="b"))
    reg.promote(Ref.parse("m:1"))
    with pytest.raises(RegistryRefused, match="is production"):
        reg.archive(Ref.parse("m:1"))
    reg.split("m", ["1=50", "2=50"])
    with pytest.raises(RegistryRefused, match="serves traffic"):
        reg.archive(Ref.parse("m:2"))
    assert reg.split("m", []) is None
    reg.archive(Ref.parse("m:2"), "obsolete")
    with pytest.raises(RegistryRefused, match="archived"):
        reg.split("m", ["production=90", "2=10"])
    for arms, message in (
        (["production=90", "1=10"], "one arm"),
        (["production=90"], "not 100"),
        (["production=x"], "LABEL=PERCENT"),
        (["production=50", "candidate=50"], "no 'candidate'"),
    ):
        with pytest.raises(InputError, match=message):
            reg.split("m", arms)
    for text in ("", "m:x", "a:b:c"):
        with pytest.raises(InputError, match="NAME:VERSION"):
            Ref.parse(text)
    with pytest.raises(InputError, match="no version 9"):
        reg.resolve(Ref.parse("m:9"))
    with pytest.raises(InputError, match="no model 'other'"):
        reg.resolve(Ref.parse("other"))
    with pytest.raises(RegistryRefused, match="passed verify and eval"):
        reg.add(make_dist(tmp_path / "failed", seed="c", passed=False))
    altered = make_dist(tmp_path / "altered", seed="d")
    (altered / "gguf" / "m-q8_0.gguf").write_bytes(b"GGUF tampered")
    with pytest.raises(InputError, match="do not match its manifest"):
        reg.add(altered)
    assert len(on_disk(reg)["models"]["m"]["versions"]) == 2
    (reg.root / "index.json").write_text("{broken")
    result = CliRunner().invoke(cli, ["registry", "list", "--registry", str(reg.root)])
    assert result.exit_code == 5 and "index.json: not valid JSON" in result.output


def test_export_is_a_verifiable_dist_and_refuses_altered_copies(tmp_path: Path, reg: Registry) -> None:
    reg.add(make_dist(tmp_path / "a"))
    reg.promote(Ref.parse("m:1"))
    out, number = reg.export(Ref.parse("m@production"), tmp_path / "deploy")
    assert number == 1
    exported = stages.read(out, stages.DIST)
    assert not dist_problems(exported)
    assert exported.data["registry"]["status"] == "production" and exported.data["registry"]["aliases"] == [
        "production"
    ]
    result = CliRunner().invoke(cli, ["verify", str(out), "--check"])
    assert result.exit_code == 0, result.output
    with pytest.raises(InputError, match="already exists"):
        reg.export(Ref.parse("m:1"), out)
    stored = reg.root / "models" / "m" / "1" / "gguf" / "m-q8_0.gguf"
    stored.chmod(0o644)
    stored.write_bytes(b"GGUF changed")
    with pytest.raises(InputError, match="not what the registry recorded"):
        reg.export(Ref.parse("m:1"), tmp_path / "deploy2")
    assert not (tmp_path / "deploy2").exists() and not list(tmp_path.glob(".deploy2*"))


def test_concurrent_registrations_both_succeed(tmp_path: Path, reg: Registry) -> None:
    dists = [make_dist(tmp_path / f"d{i}", seed=str(i)) for i in range(4)]
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "edgeft", "registry", "add", str(d), "--registry", str(reg.root)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for d in dists
    ]
    outputs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), outputs
    assert sorted(out.strip() for out, _ in outputs) == [f"m:{i}" for i in range(1, 5)]
    index = on_disk(reg)
    assert sorted(index["models"]["m"]["versions"]) == ["1", "2", "3", "4"] and index["last_event"] == 4
    assert [e["seq"] for e in reg.events()] == [1, 2, 3, 4]
    assert sorted(p.name for p in (reg.root / "models" / "m").iterdir()) == [
        "1",
        "2",
        "3",
        "4",
    ]  # no temporaries


@pytest.mark.skipif(
    shutil.which("javac") is None, reason="needs a JDK (scripts/setup.sh installs one as root)"
)
def test_java_registry_reader_routes_the_vectors_and_the_index_as_python(
    tmp_path: Path, reg: Registry
) -> None:
    src = Path(__file__).resolve().parent.parent / "edgeft" / "ship" / "javakit" / "Registry.java"
    subprocess.run(["javac", "-d", str(tmp_path / "out"), str(src)], check=True, capture_output=True)
    java = ["java", "-cp", str(tmp_path / "out"), "edgeft.kit.Registry"]
    done = subprocess.run([*java, "--vectors", str(VECTORS)], capture_output=True, text=True)
    assert done.returncode == 0 and " 0 mismatched" in done.stdout, done.stdout + done.stderr
    reg.add(make_dist(tmp_path / "a", seed="a"))
    reg.add(make_dist(tmp_path / "b", seed="b"))
    reg.promote(Ref.parse("m:1"))
    reg.split("m", ["production=70", "2=30"])
    keys = [f"key-{i}" for i in range(300)] + ["Ünïcødé", ""]
    done = subprocess.run(
        [*java, "--route", str(reg.root), "m"], input="\n".join(keys) + "\n", capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    routed = [int(line.split("\t")[1]) for line in done.stdout.splitlines()]
    assert routed == [reg.route("m", k)["version"] for k in keys]
    done = subprocess.run([*java, str(reg.root), "m", "key-1", "gguf-q8_0"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    path = Path(dict(line.split(": ", 1) for line in done.stdout.splitlines())["path"])
    assert path.is_file() and path.is_relative_to(reg.root)
    path.chmod(0o644)
    path.write_bytes(b"GGUF swapped")  # the reader refuses a file that is not the registered one
    done = subprocess.run([*java, str(reg.root), "m", "key-1", "gguf-q8_0"], capture_output=True, text=True)
    assert done.returncode != 0 and "sha256" in done.stderr


def test_events_stay_numbered_after_a_writer_died_between_log_and_index(
    tmp_path: Path, reg: Registry
) -> None:
    reg.add(make_dist(tmp_path / "a", seed="a"))
    with (reg.root / "events.jsonl").open("a") as f:  # what a writer killed after appending its event leaves
        f.write(
            json.dumps(
                {"seq": 2, "time": "2026-01-01T00:00:00Z", "user": "x", "event": "alias", "model": "m"}
            )
            + "\n"
        )
    reg.promote(Ref.parse("m:1"))
    assert [e["seq"] for e in reg.events()] == [1, 2, 3] and on_disk(reg)["last_event"] == 3


def _alter(path: Path, data: bytes = b"GGUF altered in the registry") -> None:
    path.chmod(0o644)
    path.write_bytes(data)


def _registry_cli(reg: Registry, *args: str):
    return CliRunner().invoke(cli, ["registry", *args, "--registry", str(reg.root)])


def test_a_version_altered_in_the_registry_is_neither_promoted_routed_nor_exported(
    tmp_path: Path, reg: Registry
) -> None:
    from tests.conftest import resign

    reg.add(make_dist(tmp_path / "a", seed="a"))
    reg.add(make_dist(tmp_path / "b", seed="b"))
    assert _registry_cli(reg, "promote", "m:1").exit_code == 0
    v2 = reg.root / "models" / "m" / "2"
    _alter(v2 / "gguf" / "m-q8_0.gguf")
    before = (reg.root / "index.json").read_bytes(), (reg.root / "events.jsonl").read_bytes()
    for args in (
        ("promote", "m:2", "--to", "production"),
        ("promote", "m:2", "--to", "candidate"),
        ("split", "m", "production=90", "2=10"),
    ):
        result = _registry_cli(reg, *args)
        assert result.exit_code == 5, (args, result.output)
        assert (
            "m:2 is not" in result.output
            and "m-q8_0.gguf: 28 bytes, the registry recorded 1004" in result.output
        )
    assert ((reg.root / "index.json").read_bytes(), (reg.root / "events.jsonl").read_bytes()) == before

    # The same bytes with the copied manifests re-signed to them: the index's record still refuses them,
    # the size kept equal so that only the sha256 can tell.
    _alter(v2 / "gguf" / "m-q8_0.gguf", b"GGUF" + b"x" * 1000)
    for name in ("edgeft.json", "manifest.json"):
        (v2 / name).chmod(0o644)
    resign(v2, "gguf/m-q8_0.gguf")
    result = _registry_cli(reg, "export", "m:2", str(tmp_path / "out"))
    assert result.exit_code == 5 and "its sha256 is not the one the registry recorded" in result.output, (
        result.output
    )
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out*"))
    # Production's own file altered: route names no version whose bytes are not the registered ones.
    assert _registry_cli(reg, "route", "m", "--key", "k").exit_code == 0
    _alter(reg.root / "models" / "m" / "1" / "README.md", b"# another card\n")
    result = _registry_cli(reg, "route", "m", "--key", "k")
    assert result.exit_code == 5 and "m:1 is not routed to" in result.output, result.output


def test_the_sha256_cache_never_hides_a_change(tmp_path: Path, reg: Registry) -> None:
    import os

    reg.add(make_dist(tmp_path / "a", seed="a"))
    version = reg.index().models["m"].versions[1]
    reg.check("m", version, "checked")
    assert (reg.root / ".sha256-cache.json").is_file()
    gguf = reg.root / "models" / "m" / "1" / "gguf" / "m-q8_0.gguf"
    st = gguf.stat()
    _alter(gguf, b"GGUF" + b"z" * 1000)  # same size, and the old modification time put back
    os.utime(gguf, ns=(st.st_atime_ns, st.st_mtime_ns))
    with pytest.raises(InputError, match="its sha256 is not the one the registry recorded"):
        reg.check("m", version, "checked")


def _killed(reg: Registry, dist: Path, at: str) -> None:
    """`registry add` in a process that SIGKILLs itself at `at` (a Registry method or registry
    function), as a kill -9 at that moment would."""
    code = (
        f"import os, signal, sys\nfrom edgeft.registry import store as registry\n"
        f"def die(*a, **k):\n    os.kill(os.getpid(), signal.SIGKILL)\n"
        f"target = registry.Registry if hasattr(registry.Registry, {at!r}) else registry\n"
        f"setattr(target, {at!r}, die)\n"
        f"registry.Registry({str(reg.root)!r}).add(__import__('pathlib').Path({str(dist)!r}))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == -9, done.stderr


def test_a_registration_killed_before_its_commit_leaves_nothing_counted(
    tmp_path: Path, reg: Registry
) -> None:
    reg.add(make_dist(tmp_path / "a", seed="a"))
    _killed(
        reg, make_dist(tmp_path / "b", seed="b"), "write_atomic"
    )  # the version folder is in place, no index
    assert (reg.root / "models" / "m" / "2").is_dir()
    assert sorted(on_disk(reg)["models"]["m"]["versions"]) == ["1"]
    assert [e["event"] for e in reg.events()] == ["register"]  # no "register version=2"
    result = _registry_cli(reg, "show", "m")
    assert result.exit_code == 0 and result.output.count("staging") == 1
    assert reg.add(make_dist(tmp_path / "c", seed="c")) == ("m", 2, True)  # the next writer cleans up first
    assert sorted(p.name for p in (reg.root / "models" / "m").iterdir()) == ["1", "2"]
    assert on_disk(reg)["models"]["m"]["versions"]["2"]["lineage"]["dataset_sha256"]
    assert json.loads((reg.root / "models/m/2/manifest.json").read_text())["config"]["seed"] == "c"
    assert [e["seq"] for e in reg.events()] == [1, 2]
    _killed(reg, make_dist(tmp_path / "d", seed="d"), "copy_dist")  # killed while copying the dist in
    assert [p.name for p in (reg.root / "models" / "m").iterdir() if p.name.startswith(".version.tmp-")]
    reg.promote(Ref.parse("m:1"))  # any change clears what a dead registration left
    assert sorted(p.name for p in (reg.root / "models" / "m").iterdir()) == ["1", "2"]


def test_a_registration_killed_after_its_commit_is_logged_by_the_next_writer(
    tmp_path: Path, reg: Registry
) -> None:
    reg.add(make_dist(tmp_path / "a", seed="a"))
    _killed(reg, make_dist(tmp_path / "b", seed="b"), "_append_events")  # committed, not yet logged
    assert sorted(on_disk(reg)["models"]["m"]["versions"]) == ["1", "2"]
    assert [(e["seq"], e["version"]) for e in reg.events()] == [
        (1, 1),
        (2, 2),
    ]  # read from the index meanwhile
    reg.promote(Ref.parse("m:2"))
    logged = [json.loads(line) for line in (reg.root / "events.jsonl").read_text().splitlines()]
    assert [(e["seq"], e["event"]) for e in logged] == [(1, "register"), (2, "register"), (3, "promote")]


@pytest.mark.parametrize(
    "edit, key",
    [
        (lambda m: m["versions"]["1"].update(version="x"), "models.m.versions.1.version"),
        (lambda m: m["aliases"].update(production="x"), "models.m.aliases.production"),
        (lambda m: m["aliases"].update(production=7), "models.m.aliases.production"),
        (lambda m: m.update(versions=[]), "models.m.versions"),
        (lambda m: m["versions"]["1"].update(artifacts={"a": 1}), "models.m.versions.1.artifacts"),
        (
            lambda m: m["versions"]["1"]["artifacts"][0].update(sha256=None),
            "models.m.versions.1.artifacts[0].sha256",
        ),
        (
            lambda m: m["versions"]["1"]["evaluation"]["scores"]["fine-tuned"].update(exact_match="high"),
            "models.m.versions.1.evaluation.scores.fine-tuned.exact_match",
        ),
        (
            lambda m: m.update(
                split={
                    "id": "m/1",
                    "arms": [
                        {"label": "a", "version": 1, "weight": 5000.5},
                        {"label": "b", "version": 2, "weight": 4999.5},
                    ],
                }
            ),
            "models.m.split.arms[0].weight",
        ),
        (
            lambda m: m.update(
                split={
                    "id": "m/1",
                    "arms": [
                        {"label": "a", "version": 1, "weight": 5000},
                        {"label": "b", "version": 2, "weight": 4000},
                    ],
                }
            ),
            "models.m.split.arms",
        ),
    ],
)
def test_a_malformed_index_is_an_error_naming_the_file_and_key(
    tmp_path: Path, reg: Registry, edit, key: str
) -> None:
    reg.add(make_dist(tmp_path / "a", seed="a"))
    reg.add(make_dist(tmp_path / "b", seed="b"))
    reg.promote(Ref.parse("m:1"))
    index = on_disk(reg)
    edit(index["models"]["m"])
    (reg.root / "index.json").write_text(json.dumps(index))
    for args in (("show", "m"), ("show", "m:1"), ("list",), ("route", "m", "--key", "k"), ("log",)):
        result = _registry_cli(reg, *args)
        assert result.exit_code == 5, (args, result.output)
        assert f"index.json: {key}: expected" in result.output and "Traceback" not in result.output


def test_nan_and_infinite_weights_are_refused(tmp_path: Path, reg: Registry) -> None:
    reg.add(make_dist(tmp_path / "a", seed="a"))
    reg.add(make_dist(tmp_path / "b", seed="b"))
    reg.promote(Ref.parse("m:1"))
    for arms in (("production=nan", "2=nan"), ("production=inf", "2=-inf"), ("production=1e400", "2=1")):
        result = _registry_cli(reg, "split", "m", *arms)
        assert result.exit_code == 5 and "LABEL=PERCENT" in result.output, result.output
    index = on_disk(reg)
    index["models"]["m"]["split"] = {
        "id": "m/1",
        "arms": [{"label": "a", "version": 1, "weight": 5000}, {"label": "b", "version": 2, "weight": 5000}],
    }
    for literal, message in (
        ("NaN", "NaN is not a JSON number"),
        ("1e309", "split.arms[0].weight: expected an integer"),
    ):
        (reg.root / "index.json").write_text(json.dumps(index).replace("5000}", f"{literal}}}", 1))
        result = _registry_cli(reg, "route", "m", "--key", "k")
        assert result.exit_code == 5 and message in result.output, result.output


def test_versions_registered_before_the_file_record_are_held_to_the_index_artifacts(
    tmp_path: Path, reg: Registry
) -> None:
    reg.add(make_dist(tmp_path / "a", seed="a"))
    index = on_disk(reg)
    for key in ("files",):
        del index["models"]["m"]["versions"]["1"][key]
    del index["last_change"]
    (reg.root / "index.json").write_text(json.dumps(index))  # as an earlier edgeft wrote it
    assert _registry_cli(reg, "promote", "m:1").exit_code == 0
    assert _registry_cli(reg, "export", "m:1", str(tmp_path / "out")).exit_code == 0
    _alter(reg.root / "models" / "m" / "1" / "gguf" / "m-q8_0.gguf", b"GGUF" + b"x" * 1000)
    result = _registry_cli(reg, "export", "m:1", str(tmp_path / "out2"))
    assert (
        result.exit_code == 5
        and "m-q8_0.gguf: its sha256 is not the one the registry recorded" in result.output
    )


def test_the_views_of_an_empty_and_a_registered_registry(tmp_path: Path, reg: Registry) -> None:
    from edgeft.registry.index import RegistryIndex
    from edgeft.registry.view import list_table, show

    assert list_table(RegistryIndex()) == "no models registered (edgeft registry add DIST)"
    reg.add(make_dist(tmp_path / "a", seed="a"))
    reg.promote(Ref.parse("m:1"))
    table = list_table(reg.index()).splitlines()
    assert table[0].split() == ["model", "versions", "production", "candidate", "split"]
    assert table[-1].split()[:4] == ["m", "1", "1", "-"]
    card = show(reg, Ref.parse("m:1"), None, as_json=False)
    assert card.startswith("m:1  status production") and "gguf-q8_0" in card
    assert json.loads(show(reg, Ref.parse("m"), None, as_json=True))["aliases"] == {"production": 1}
