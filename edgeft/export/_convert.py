"""Run llama.cpp's convert_hf_to_gguf.py with two things it cannot be told on its command line.

    python -m edgeft.export._convert VENDOR_DIR PRE EOT <convert_hf_to_gguf.py arguments…>

- PRE (or "-"): a BPE pre-tokenizer edgeft identified by tokenising (export.pretok). llama.cpp knows one
  only by the hash of a test string's tokens, which also depends on the vocabulary, so a
  fine-tune with its own vocabulary but a standard pre-tokenizer is refused; PRE answers where
  that hash lookup fails.
- EOT (or "-"): the end-of-turn token id, written as tokenizer.ggml.eot_token_id. The converter
  writes only the token types it finds by name; without this, llama.cpp guesses the end of turn
  from a list of known token texts.
"""

from __future__ import annotations

import runpy
import sys
from pathlib import Path


def main() -> None:
    vendor, pre, eot, *args = sys.argv[1:]
    script = Path(vendor) / "convert_hf_to_gguf.py"
    sys.path.insert(0, vendor)
    import conversion.base as base
    import gguf

    if pre != "-":
        original = base.TextModel.get_vocab_base_pre

        def get_vocab_base_pre(self, tokenizer) -> str:
            try:
                return original(self, tokenizer)
            except NotImplementedError:
                return pre

        base.TextModel.get_vocab_base_pre = get_vocab_base_pre
    if eot != "-":
        add_to_gguf = gguf.SpecialVocab.add_to_gguf

        def with_eot(self, gw, quiet: bool = False) -> None:
            add_to_gguf(self, gw, quiet=quiet)
            gw.add_eot_token_id(int(eot))

        gguf.SpecialVocab.add_to_gguf = with_eot
    sys.argv = [str(script), *args]
    runpy.run_path(str(script), run_name="__main__")


if __name__ == "__main__":
    main()
