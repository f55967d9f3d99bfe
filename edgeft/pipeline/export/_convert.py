"""Run llama.cpp's convert_hf_to_gguf.py with two things it cannot be told on its command line.

    python -m edgeft.pipeline.export._convert VENDOR_DIR PRE EOT ADD_BOS <convert_hf_to_gguf.py arguments…>

- PRE (or "-"): a BPE pre-tokenizer edgeft identified by tokenising (export.pretok). llama.cpp knows one
  only by the hash of a test string's tokens, which also depends on the vocabulary, so a
  fine-tune with its own vocabulary but a standard pre-tokenizer is refused; PRE answers where
  that hash lookup fails.
- EOT (or "-"): the end-of-turn token id, written as tokenizer.ggml.eot_token_id. The converter
  writes only the token types it finds by name; without this, llama.cpp guesses the end of turn
  from a list of known token texts.
- ADD_BOS ("0", "1" or "-"): whether transformers' tokenizer puts BOS first, written as
  tokenizer.ggml.add_bos_token where the tokenizer's files do not say (Qwen's do not). Without it
  llama.cpp takes the pre-tokenizer's default: a Qwen2 vocabulary found to tokenise like
  'llama-bpe' would get BOS added where transformers adds none.
"""

from __future__ import annotations

import runpy
import sys
from pathlib import Path


def main() -> None:
    vendor, pre, eot, add_bos, *args = sys.argv[1:]
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
    if eot != "-" or add_bos != "-":
        add_to_gguf = gguf.SpecialVocab.add_to_gguf

        def with_ours(self, gw, quiet: bool = False) -> None:
            add_to_gguf(self, gw, quiet=quiet)
            if eot != "-":
                gw.add_eot_token_id(int(eot))
            if add_bos != "-" and "bos" not in self.add_special_token:
                gw.add_add_bos_token(add_bos == "1")

        gguf.SpecialVocab.add_to_gguf = with_ours
    sys.argv = [str(script), *args]
    runpy.run_path(str(script), run_name="__main__")


if __name__ == "__main__":
    main()
