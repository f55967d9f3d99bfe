"""Build llama.cpp's command-line tools against the llama-cpp-python wheel set-up compiled.

edgeft runs llama-quantize (importance matrix, per-tensor types), llama-imatrix, llama-perplexity
(verify's second opinion) and llama-bench. They are compiled from the *same pinned* source package
as the wheel and linked against the wheel's own shared libraries (libllama, libggml*, the common
library), so tools, converter and runtime are one llama.cpp version and one binary: only the tools'
own sources are compiled (about 15 s on 2 cores, not a second 6-minute build of ggml). The result is
a self-contained folder, bin/ and lib/ (the wheel's libraries; bin/ finds them through its RPATH):

    python scripts/build_llama_tools.py --sdist SDIST --wheel WHEEL --out DIR

llama-server is not built: it needs llama.cpp's web UI assets and HTTP stack, which the wheel's
libraries do not carry.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

# tool → its sources under tools/ of llama.cpp
TOOLS = {
    "llama-quantize": ["quantize/quantize.cpp", "quantize/main.cpp"],
    "llama-imatrix": ["imatrix/imatrix.cpp"],
    "llama-perplexity": ["perplexity/perplexity.cpp", "perplexity/main.cpp"],
    "llama-bench": ["llama-bench/llama-bench.cpp", "llama-bench/main.cpp"],
}
# What the tools include: llama.cpp's and ggml's headers, the common library's, its vendored headers.
SOURCES = ("include/", "ggml/include/", "common/", "vendor/", "tools/")
LIBS = ("libllama-common", "libllama", "libggml", "libggml-base", "libggml-cpu", "libmtmd")


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def unpack_sources(sdist: Path, dest: Path) -> Path:
    with tarfile.open(sdist) as tar:
        prefix = next(m.name for m in tar.getmembers() if m.name.endswith("/vendor/llama.cpp/CMakeLists.txt"))
        prefix = prefix[: -len("CMakeLists.txt")]
        for m in tar.getmembers():
            rel = m.name[len(prefix) :]
            if m.name.startswith(prefix) and rel.startswith(SOURCES) and m.isfile():
                m.name = rel
                tar.extract(m, dest, filter="data")
    return dest


def unpack_libs(wheel: Path, lib: Path) -> list[str]:
    """The wheel's shared libraries under their SONAME (lib<name>.so.0) and the link name."""
    lib.mkdir(parents=True)
    names = []
    with zipfile.ZipFile(wheel) as zf:
        for info in zf.infolist():
            name = info.filename
            if not name.startswith("lib/") or "/" in name[4:]:
                continue
            base = name[4:]
            stem = base.split(".so")[0]
            if stem in LIBS and base.endswith(".so.0"):
                (lib / base).write_bytes(zf.read(info))
                (lib / f"{stem}.so").symlink_to(base)
                names.append(base)
    missing = {f"{s}.so.0" for s in LIBS} - set(names)
    if missing:
        sys.exit(f"error: {wheel.name} lacks {', '.join(sorted(missing))}")
    return sorted(names)


def compile_tool(cxx: str, src: Path, lib: Path, out: Path, name: str, files: list[str]) -> None:
    cmd = [
        cxx,
        "-O2",
        "-std=c++17",
        "-pthread",
        f"-I{src / 'include'}",
        f"-I{src / 'ggml' / 'include'}",
        f"-I{src / 'common'}",
        f"-I{src / 'vendor'}",
        f"-I{src / 'tools' / Path(files[0]).parent}",
        *(str(src / "tools" / f) for f in files),
        f"-L{lib}",
        "-lllama-common",
        "-lllama",
        "-lggml",
        "-lggml-base",
        # DT_RPATH (not RUNPATH) so the wheel's libraries, which carry no search path of their
        # own, find each other beside the tool too.
        "-Wl,--disable-new-dtags,-rpath,$ORIGIN/../lib",
        "-o",
        str(out / name),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"error: compiling {name} failed:\n" + proc.stderr[-3000:])


def build(sdist: Path, wheel: Path, out: Path) -> None:
    cxx = os.environ.get("CXX", "c++")
    if not shutil.which(cxx):
        sys.exit(f"error: no C++ compiler ({cxx}); install g++ (it also builds the wheel)")
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.tmp-") as tmp:
        work = Path(tmp)
        src = unpack_sources(sdist, work / "src")
        stage = work / "out"
        libs = unpack_libs(wheel, stage / "lib")
        (stage / "bin").mkdir()
        with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
            for job in [
                pool.submit(compile_tool, cxx, src, stage / "lib", stage / "bin", n, f)
                for n, f in TOOLS.items()
            ]:
                job.result()
        (stage / "SOURCE").write_text(
            f"sdist={sdist.name}\nsdist_sha256={sha256_of(sdist)}\nwheel={wheel.name}\n"
            f"wheel_sha256={sha256_of(wheel)}\ntools={' '.join(TOOLS)}\nlibs={' '.join(libs)}\n"
        )
        if out.exists():
            shutil.rmtree(out)
        stage.rename(out)
    print(f"built {', '.join(TOOLS)} into {out}", file=sys.stderr)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sdist", type=Path, required=True, help="the pinned llama-cpp-python source package"
    )
    parser.add_argument("--wheel", type=Path, required=True, help="the llama-cpp-python wheel built from it")
    parser.add_argument("--out", type=Path, required=True, help="folder to create (bin/, lib/, SOURCE)")
    args = parser.parse_args()
    build(args.sdist.expanduser(), args.wheel.expanduser(), args.out.expanduser())


if __name__ == "__main__":
    main()
