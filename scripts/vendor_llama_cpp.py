"""Unpack llama.cpp's conversion code from the pinned llama-cpp-python source package.

The converter and the runtime must be the same llama.cpp version, so the converter is taken
from the very source package that llama-cpp-python is compiled from (pin in vendor/PIN).

    python scripts/vendor_llama_cpp.py --sdist ~/.cache/edgeft/sdist/llama_cpp_python-0.3.36.tar.gz
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENDOR = ROOT / "vendor"
# What we take from the source package: the HF→GGUF converter with its model-family package,
# the LoRA→GGUF converter, and gguf-py (installed as `gguf`: PyPI's gguf of the same version
# number lacks what this converter needs).
TAKE = ("convert_hf_to_gguf.py", "convert_lora_to_gguf.py", "conversion/", "gguf-py/", "LICENSE")


def read_pin() -> dict[str, str]:
    pin: dict[str, str] = {}
    for line in (VENDOR / "PIN").read_text().splitlines():
        if line.startswith("sha256="):
            pin["sha256"] = line.split("=", 1)[1].strip()
        elif line.startswith("llama-cpp-python=="):  # other pins (the JS Jinja engine) are set-up's
            pin["package"], pin["version"] = (s.strip() for s in line.split("==", 1))
    return pin


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def vendor(sdist: Path) -> Path:
    pin = read_pin()
    digest = sha256_of(sdist)
    if digest != pin["sha256"]:
        sys.exit(f"error: {sdist}: sha256 {digest} does not match vendor/PIN ({pin['sha256']})")
    prefix = f"llama_cpp_python-{pin['version']}/vendor/llama.cpp/"
    target = VENDOR / "llama.cpp"
    with tempfile.TemporaryDirectory(dir=VENDOR) as tmp, tarfile.open(sdist) as tar:
        members = [
            m
            for m in tar.getmembers()
            if m.name.startswith(prefix) and m.name[len(prefix) :].startswith(TAKE) and m.isfile()
        ]
        for m in members:
            m.name = m.name[len(prefix) :]
            tar.extract(m, tmp, filter="data")
        (Path(tmp) / "SOURCE").write_text(
            f"{pin['package']}=={pin['version']}\nsha256={digest}\nfiles={len(members)}\n"
        )
        if target.exists():
            shutil.rmtree(target)
        Path(tmp).rename(target)
        Path(tmp).mkdir()  # TemporaryDirectory wants something to remove
    print(f"vendored {len(members)} files from {sdist.name} into {target}", file=sys.stderr)
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sdist", type=Path, required=True, help="llama-cpp-python source package")
    vendor(parser.parse_args().sdist.expanduser())


if __name__ == "__main__":
    main()
