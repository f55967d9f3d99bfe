"""Build llama.cpp's command-line tools against the llama-cpp-python wheel set-up compiled.

edgeft runs llama-quantize (importance matrix, per-tensor types), llama-imatrix, llama-perplexity
(verify's second opinion), llama-bench and llama-server (what `edgeft serve` fronts). They are compiled from the *same pinned* source package
as the wheel and linked against the wheel's own shared libraries (libllama, libggml*, the common
library), so tools, converter and runtime are one llama.cpp version and one binary: only the tools'
own sources are compiled (about 75 s on 2 cores, most of it llama-server; not a second 6-minute build
of ggml). The result is
a self-contained folder, bin/ and lib/ (the wheel's libraries; bin/ finds them through its RPATH):

    python scripts/build_llama_tools.py --sdist SDIST --wheel WHEEL --out DIR

llama-server is built without its web UI: llama.cpp's CMake fetches or npm-builds the UI assets
and, where it has none, embeds an empty asset table (its "building without an embedded UI"); the
same table is generated here from the source's own ui.h.in/ui.cpp.in. Its HTTP stack (cpp-httplib)
and server sources come from the same source package.
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
    "llama-server": [
        *(
            f"server/{n}.cpp"
            for n in (
                "server-chat server-task server-queue server-common server-context server-stream "
                "server-tools server-mcp server-schema server server-http server-models main"
            ).split()
        ),
        "../vendor/cpp-httplib/httplib.cpp",
        "@ui.cpp",  # generated (see the docstring)
    ],
}
EXTRA_LIBS = {"llama-server": ["-lmtmd"]}
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


def _compile(cmd: list[str], what: str) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"error: compiling {what} failed:\n" + proc.stderr[-3000:])


def _includes(src: Path, gen: Path, first: str) -> list[str]:
    dirs = [src / "include", src / "ggml" / "include", src / "common", src / "vendor", src]
    dirs += [src / "tools" / Path(first).parent, src / "tools" / "mtmd", gen]
    return [f"-I{d}" for d in dirs]


def generate_ui_table(src: Path, gen: Path) -> None:
    """ui.h / ui.cpp with no assets, from llama.cpp's own templates (what its CMake writes when
    it has no UI assets)."""
    gen.mkdir(parents=True, exist_ok=True)
    ui = src / "tools" / "ui"
    header = (ui / "ui.h.in").read_text().replace("#cmakedefine LLAMA_UI_HAS_ASSETS 1", "")
    body = (ui / "ui.cpp.in").read_text().replace("@ASSET_ARRAYS@", "").replace("@ASSET_TABLE@", "")
    body = body.replace("@USE_GZIP@", "false")
    for name, text in (("ui.h", header), ("ui.cpp", body)):
        text = text.replace("@N_ASSETS@", "0")
        if "@" in text.replace("@file", ""):
            sys.exit(f"error: {ui / (name + '.in')} has placeholders this script does not know")
        (gen / name).write_text(text)


def compile_object(cxx: str, src: Path, gen: Path, objs: Path, name: str, first: str, file: str) -> Path:
    path = gen / file[1:] if file.startswith("@") else src / "tools" / file
    out = objs / name / (Path(file).stem + ".o")
    out.parent.mkdir(parents=True, exist_ok=True)
    _compile(
        [cxx, "-O2", "-std=c++17", "-pthread", *_includes(src, gen, first), "-c", str(path), "-o", str(out)],
        file,
    )
    return out


def link_tool(cxx: str, lib: Path, out: Path, name: str, objects: list[Path]) -> None:
    cmd = [
        cxx,
        "-pthread",
        *(str(o) for o in objects),
        f"-L{lib}",
        "-lllama-common",
        *EXTRA_LIBS.get(name, []),
        "-lllama",
        "-lggml",
        "-lggml-base",
        # DT_RPATH (not RUNPATH) so the wheel's libraries, which carry no search path of their
        # own, find each other beside the tool too.
        "-Wl,--disable-new-dtags,-rpath,$ORIGIN/../lib",
        "-o",
        str(out / name),
    ]
    _compile(cmd, name)


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
        gen = work / "gen"
        generate_ui_table(src, gen)
        with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
            jobs = {
                name: [
                    pool.submit(compile_object, cxx, src, gen, work / "obj", name, files[0], f) for f in files
                ]
                for name, files in TOOLS.items()
            }
            for name, objects in jobs.items():
                link_tool(cxx, stage / "lib", stage / "bin", name, [o.result() for o in objects])
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
