"""Run llama.cpp's convert_hf_to_gguf.py with a BPE pre-tokenizer edgeft identified by configuration.

llama.cpp recognises a BPE pre-tokenizer only by the hash of one test string's tokens, so a
fine-tune with its own vocabulary but a standard pre-tokenizer is refused. When the tokenizer's
pre-tokenizer configuration is identical to one llama.cpp implements, edgeft runs the converter
through this wrapper, which answers with that pre-tokenizer's name where the hash lookup fails.

    python -m edgeft.export._convert_with_pre PRE VENDOR_DIR <convert_hf_to_gguf.py arguments…>
"""

from __future__ import annotations

import runpy
import sys
from pathlib import Path


def main() -> None:
    pre, vendor, *args = sys.argv[1:]
    script = Path(vendor) / "convert_hf_to_gguf.py"
    sys.path.insert(0, vendor)
    import conversion.base as base

    original = base.TextModel.get_vocab_base_pre

    def get_vocab_base_pre(self, tokenizer) -> str:  # type: ignore[no-untyped-def]
        try:
            return original(self, tokenizer)
        except NotImplementedError:
            return pre

    base.TextModel.get_vocab_base_pre = get_vocab_base_pre
    sys.argv = [str(script), *args]
    runpy.run_path(str(script), run_name="__main__")


if __name__ == "__main__":
    main()
