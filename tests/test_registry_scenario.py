"""The registry scenario on real builds: two versions of the example (0.1 and 1 epoch on the micro
model), registered (one by `build --register`, one by `registry add`), v1 promoted, v2 A/B-tested at
10% then 20%, 10,000 request ids routed, the Java kit's Registry routing as Python does, v2
promoted (v1 archived), rolled back; the event log and index checked after each step; two
registrations at once; export of production; the Modelfiles and the LM Studio layout."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import EXAMPLE, on_disk, write_config
from test_publish import parse_modelfile

from edgeft.cli import cli
from edgeft.core import stages
from edgeft.core.fileio import sha256_file
from edgeft.registry.store import Registry

pytestmark = pytest.mark.slow


def _config(root: Path, version: int, epochs: float) -> Path:
    return write_config(
        root / f"v{version}.yaml",
        name="nl2sql-micro",
        base_model="tiny:micro",
        workdir=f"runs{version}",
        dist_dir=f"dist{version}",
        registry="registry",
        license="apache-2.0",
        data={"train": str(EXAMPLE / "data" / "nl2sql.jsonl")},
        train={"epochs": epochs, "learning_rate": 0.003, "max_seq_length": 256},
        export={"gguf": {"types": ["q8_0"], "lora": True}, "onnx": {"types": []}},
        verify={"max_prompts": 2, "max_new_tokens": 16},
        eval={"max_examples": 8},
    )


def cli_ok(*args: str) -> str:
    result = CliRunner().invoke(cli, list(args))
    assert result.exit_code == 0, result.output
    return result.stdout


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, micro_model: Path) -> tuple[Path, Path, Path]:
    root = tmp_path_factory.mktemp("registry")
    c1, c2 = _config(root, 1, 0.1), _config(root, 2, 1.0)
    assert cli_ok("build", "-c", str(c1), "--register").strip() == str(root / "dist1" / "nl2sql-micro")
    cli_ok("build", "-c", str(c2))
    return root, root / "dist1" / "nl2sql-micro", root / "dist2" / "nl2sql-micro"


def test_versions_promotion_ab_split_and_rollback(built: tuple[Path, Path, Path]) -> None:
    root, dist1, dist2 = built
    reg = Registry(root / "registry")
    kinds = lambda: [e["event"] for e in reg.events()]  # noqa: E731
    opt = ["--registry", str(reg.root)]
    assert kinds() == ["register"]
    assert cli_ok("registry", "add", str(dist2), *opt, "--reason", "1 epoch").strip() == "nl2sql-micro:2"
    index = on_disk(reg)
    versions = index["models"]["nl2sql-micro"]["versions"]
    assert [v["status"] for v in versions.values()] == ["staging", "staging"] and kinds() == ["register"] * 2
    assert versions["2"]["lineage"]["parent_version"] == 1
    assert versions["1"]["lineage"]["dataset_sha256"] == versions["2"]["lineage"]["dataset_sha256"]
    assert versions["1"]["lineage"]["config_sha256"] != versions["2"]["lineage"]["config_sha256"]
    for v in versions.values():  # every artifact with its checksum, as stored
        for a in v["artifacts"]:
            if "sha256" in a:
                assert sha256_file(reg.root / v["path"] / a["path"]) == a["sha256"]

    cli_ok("registry", "promote", "nl2sql-micro:1", *opt)
    cli_ok("registry", "promote", "nl2sql-micro:2", "--to", "candidate", *opt)
    cli_ok("registry", "split", "nl2sql-micro", "production=90", "candidate=10", *opt)
    assert kinds()[2:] == ["promote", "alias", "split"]
    keys = [f"request-{i}" for i in range(10_000)]
    index = reg.index()
    at10 = [reg.route("nl2sql-micro", k, index)["version"] for k in keys]
    assert 900 <= at10.count(2) <= 1100  # 10% ± 1% (binomial sd is 0.3%)
    assert at10 == [reg.route("nl2sql-micro", k)["version"] for k in keys]  # deterministic
    routed = json.loads(cli_ok("registry", "route", "nl2sql-micro", "--key", keys[0], "--json", *opt))
    assert routed["version"] == at10[0] and routed["split"] == "nl2sql-micro/1"

    # The Java kit in the dist: the shipped vectors, and this registry's split, routed as Python routes them.
    if shutil.which("javac"):
        out = root / "java-out"
        subprocess.run(
            ["javac", "-d", str(out), str(dist2 / "java" / "src" / "edgeft" / "kit" / "Registry.java")],
            check=True,
            capture_output=True,
        )
        java = ["java", "-cp", str(out), "edgeft.kit.Registry"]
        done = subprocess.run(
            [*java, "--vectors", str(dist2 / "java" / "routing-vectors.json")], capture_output=True, text=True
        )
        assert done.returncode == 0 and " 0 mismatched" in done.stdout, done.stdout + done.stderr
        done = subprocess.run(
            [*java, "--route", str(reg.root), "nl2sql-micro"],
            input="\n".join(keys[:3000]) + "\n",
            capture_output=True,
            text=True,
        )
        assert [int(line.split("\t")[1]) for line in done.stdout.splitlines()] == at10[:3000], done.stderr
        candidate_key = keys[at10.index(2)]
        done = subprocess.run(
            [*java, str(reg.root), "nl2sql-micro", candidate_key, "gguf-q8_0"], capture_output=True, text=True
        )
        lines = dict(line.split(": ", 1) for line in done.stdout.splitlines())
        assert (
            lines["version"] == "2"
            and Path(lines["path"]) == reg.root / "models/nl2sql-micro/2/gguf/nl2sql-micro-q8_0.gguf"
        )

    cli_ok("registry", "split", "nl2sql-micro", "production=80", "candidate=20", *opt)
    at20 = [reg.route("nl2sql-micro", k)["version"] for k in keys]
    assert 1900 <= at20.count(2) <= 2100 and all(b == 2 for a, b in zip(at10, at20, strict=True) if a == 2)

    # v2 trained ten times longer: not worse than v1 on their shared examples (paired), so the gate lets it through.
    cli_ok("registry", "promote", "nl2sql-micro:2", *opt)
    model = on_disk(reg)["models"]["nl2sql-micro"]
    assert model["aliases"] == {"production": 2} and model["split"] is None
    assert [model["versions"][v]["status"] for v in ("1", "2")] == ["archived", "production"]
    assert kinds()[5:] == ["split", "promote", "archive", "split-end"]
    assert all(r == "production" for r in [reg.route("nl2sql-micro", k)["label"] for k in keys[:50]])

    cli_ok("registry", "rollback", "nl2sql-micro", "--reason", "drill", *opt)
    model = on_disk(reg)["models"]["nl2sql-micro"]
    assert model["aliases"]["production"] == 1 and model["history"] == [1]
    assert [model["versions"][v]["status"] for v in ("1", "2")] == ["production", "archived"]
    assert kinds()[9:] == ["rollback", "archive"] and on_disk(reg)["last_event"] == 11
    shown = cli_ok("registry", "show", "nl2sql-micro:2", "--against", "nl2sql-micro:1", *opt)
    assert "chrf" in shown and "kl_mean" in shown

    exported = root / "deploy"
    cli_ok("registry", "export", "nl2sql-micro@production", str(exported), *opt)
    assert cli_ok("verify", str(exported), "--check").strip().endswith("files match the manifest")
    data = json.loads((exported / "manifest.json").read_text())
    assert data["registry"]["version"] == 1 and data["registry"]["status"] == "production"
    assert "status **production**" in (exported / "README.md").read_text()


def test_two_registrations_at_once(built: tuple[Path, Path, Path]) -> None:
    root, dist1, dist2 = built
    other = root / "registry-concurrent"
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "edgeft", "registry", "add", str(d), "--registry", str(other)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for d in (dist1, dist2)
    ]
    outputs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    assert sorted(o.strip() for o, _ in outputs) == ["nl2sql-micro:1", "nl2sql-micro:2"]
    index = on_disk(Registry(other))
    assert sorted(index["models"]["nl2sql-micro"]["versions"]) == ["1", "2"] and index["last_event"] == 2
    contents = {v["content"] for v in index["models"]["nl2sql-micro"]["versions"].values()}
    assert contents == {
        v["content"]
        for v in on_disk(Registry(root / "registry"))["models"]["nl2sql-micro"]["versions"].values()
    }


def test_every_gguf_has_a_modelfile_and_lm_studio_gets_its_layout(built: tuple[Path, Path, Path]) -> None:
    root, _, dist2 = built
    dist = stages.read(dist2, stages.DIST)
    report = json.loads((dist2 / "verify" / "report.json").read_text())
    reference_stops = {report["stops"]["tokens"][str(i)] for i in report["stops"]["reference"]}
    assert reference_stops  # the reference ended its replies on a token, which every Modelfile must stop on
    for a in dist.artifacts:
        if a.format not in ("gguf", "gguf-lora"):
            continue
        path = dist2 / (
            a.path[: -len(".gguf")] + ".Modelfile" if a.format == "gguf" else a.path + "/Modelfile"
        )
        parsed = parse_modelfile(path.read_text())
        assert (path.parent / parsed["FROM"][0]).is_file()
        assert ("ADAPTER" in parsed) == (a.format == "gguf-lora")
        stops = {p.split(" ", 1)[1].strip('"') for p in parsed["PARAMETER"] if p.startswith("stop ")}
        assert reference_stops <= stops
        assert f"num_ctx {report['context_tokens']}" in parsed["PARAMETER"] and parsed["LICENSE"] == [
            '"""apache-2.0"""'
        ]
        checks = report["artifacts"][a.name]["checks"]
        assert checks["js_template"]["passed"]
        if shutil.which("node"):
            assert not checks["js_template"].get("skipped"), checks["js_template"]
    out = cli_ok("export", "lmstudio", str(dist2), str(root / "lmstudio"), "--publisher", "acme").split()
    assert out == [str(root / "lmstudio" / "acme" / "nl2sql-micro" / "nl2sql-micro-q8_0.gguf")]
    assert sha256_file(Path(out[0])) == dist.artifact("gguf-q8_0").sha256
    cli_ok(
        "export", "lmstudio", str(dist2), str(root / "lmstudio"), "--publisher", "acme"
    )  # same bytes: kept
