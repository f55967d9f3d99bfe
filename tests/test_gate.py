"""What verify and eval share (edgeft.judge.gate): an artifact that cannot be loaded is named with
its reason, and the artifact (not the gate) fails."""

from __future__ import annotations

from pathlib import Path

from edgeft.core.manifest import Artifact, StageWriter
from edgeft.judge.gate import load_or_why


def test_an_unloadable_artifact_is_reported_not_raised(tmp_path: Path) -> None:
    with StageWriter(tmp_path / "export", "export-gguf") as w:
        (w.tmp / "m.gguf").write_bytes(b"GGUF" + b"\0" * 60)  # a header and nothing behind it
        (w.tmp / "m.bin").write_bytes(b"?")
        stage = w.publish()
    rt, why = load_or_why(stage, Artifact("m", "m.bin", "bin"))
    assert rt is None and why is not None and "no runtime for artifact format 'bin'" in why
    rt, why = load_or_why(stage, Artifact("gguf-f16", "m.gguf", "gguf", info={"type": "f16"}))
    assert rt is None and why  # llama.cpp refuses the file; the reason is kept for the report
    rt, why = load_or_why(stage, Artifact("escape", "../../etc/passwd", "gguf"))
    assert rt is None and why is not None and "outside" in why  # a manifest path stays inside its folder
