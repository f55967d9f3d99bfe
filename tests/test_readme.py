"""The README tells the truth about the code: exit codes, config keys, and no links out of the repo."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from edgeft.config import Config
from edgeft.errors import EXIT_CODES

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def _section(title: str) -> str:
    return README.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]


def test_exit_code_table_is_the_code_s() -> None:
    rows = re.findall(r"^\| (\d+) \| (.+) \|$", _section("Exit codes"), re.MULTILINE)
    assert {int(code): meaning for code, meaning in rows} == EXIT_CODES


def _keys(cls: type, prefix: str = "") -> list[str]:
    out = []
    for f in dataclasses.fields(cls):
        if f.name == "source":
            continue
        if dataclasses.is_dataclass(f.type) or (isinstance(f.type, str) and f.type.endswith("Config")):
            sub = {"data": "DataConfig", "train": "TrainConfig", "merge": "MergeConfig", "export": "ExportConfig",
                   "verify": "VerifyConfig", "eval": "EvalConfig", "gguf": "GGUFConfig", "onnx": "ONNXConfig"}
            import edgeft.config as config_module

            out += _keys(getattr(config_module, sub[f.name]), f"{prefix}{f.name}.")
        else:
            out.append(prefix + f.name)
    return out


def test_every_config_key_is_in_the_reference() -> None:
    reference = _section("Config reference")
    documented = set(re.findall(r"`([a-z_.]+)`", reference))
    # "train.lora_r / lora_alpha / lora_dropout" rows name the later keys without their section
    for row in re.findall(r"^\| `([a-z_]+)\.([a-z_]+)` / (.+?) \|", reference, re.MULTILINE):
        documented |= {f"{row[0]}.{k}" for k in re.findall(r"`([a-z_]+)`", row[2])}
    missing = [k for k in _keys(Config) if k not in documented]
    assert not missing, f"config keys missing from the README's reference: {missing}"


def test_no_link_leaves_the_repository() -> None:
    assert "../shared" not in README and "DESIGN.md" not in README
