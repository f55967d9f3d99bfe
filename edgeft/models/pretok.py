"""Which of llama.cpp's BPE pre-tokenizers a tokenizer uses, found by behaviour.

llama.cpp's converter names a BPE pre-tokenizer by hashing the tokens of one test string, and
the tokens depend on the vocabulary: a fine-tune whose vocabulary is its own (trained, extended,
or simply a model llama.cpp has not listed) is refused even when its pre-tokenizer is a standard
one. Here every pre-tokenizer name the pinned converter can write is tried on a vocabulary-only
GGUF of the model itself (the name given to llama.cpp as a metadata override, so one file serves
all of them), and the first under which llama.cpp tokenises a stress corpus exactly as the
model's own tokenizer does is kept. Verify then re-checks the token ids of every artifact.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from pathlib import Path

# Each piece is somewhere pre-tokenizers disagree: digit grouping, contractions and their case,
# runs of spaces and newlines, letters of other scripts, emoji sequences, punctuation runs,
# non-ASCII numerics, no-break spaces.
_PIECES = [
    "SELECT",
    " name",
    " 1",
    " 12",
    " 123",
    " 1234567",
    "3.14159",
    "3..3",
    "  ",
    "   ",
    "\t",
    " \t",
    "\n",
    "\n\n",
    " \n \n",
    "don't",
    " I'VE",
    "'s",
    "'Re",
    " we'lL",
    "''",
    "Ünïcødé",
    " Ärger",
    "日本語のテキスト",
    "我想在apple工作1314",
    " Ελληνικά",
    " нещо",
    "កាន់តែពិសេស",
    "🚀",
    "😶\u200d🌫️",
    "🦙🦙",
    "✅",
    "------",
    "=======",
    "......",
    "!!!?",
    "```",
    '"""',
    "$%&*",
    "a-b_c",
    "x+=1;",
    "½",
    " ²",
    "٣",
    "Ⅻ",
    "\u00a0",
    " \u3000",
    "ﬁ",
    "é",
    "e\u0301",
    "camelCase",
    "snake_case",
    "HTTPServer",
    "x" * 30,
]


def stress_corpus(n: int = 400, seed: int = 0) -> list[str]:
    """Texts made of the pieces above in random order: the corpus candidates must agree on."""
    rng = random.Random(seed)
    texts = ["".join(rng.choice(_PIECES) for _ in range(rng.randint(1, 10))) for _ in range(n)]
    return [*_PIECES, *texts]


# Tried first, in this order: the generic names of the common families. Several names share one
# implementation (llama.cpp's GLM-4 pre-tokenizer is Llama 3's regex, for one), and the first
# that agrees is the one written, so a Llama-3-style tokenizer is called `llama-bpe`, not `chatglm-bpe`.
PREFERRED = (
    "gpt-2",
    "llama-bpe",
    "qwen2",
    "smollm",
    "gpt-4o",
    "tekken",
    "deepseek-llm",
    "deepseek-coder",
    "deepseek-v3",
    "falcon",
    "mpt",
    "starcoder",
    "olmo",
    "stablelm2",
    "phi-2",
)


def converter_pre_tokenizers(vendor: Path) -> list[str]:
    """Every BPE pre-tokenizer name the pinned converter writes (so llama.cpp implements it):
    those of PREFERRED it has first, then the others in the converter's order."""
    source = (vendor / "conversion" / "base.py").read_text()
    names = list(dict.fromkeys(re.findall(r'\bres = "([^"]+)"', source)))
    if not names:
        raise RuntimeError(f"{vendor / 'conversion' / 'base.py'}: no pre-tokenizer names found")
    return [n for n in PREFERRED if n in names] + [n for n in names if n not in PREFERRED]


@dataclass
class Match:
    name: str | None  # llama.cpp's name for the pre-tokenizer, None when none agrees
    tried: int  # names tried
    texts: int  # texts in the corpus
    nearest: str | None = None  # when none agrees: the name agreeing on most texts
    nearest_agrees: int = 0
    first_difference: str | None = None  # a text on which the nearest name differs


def match(tokenizer_json: Path, vocab_gguf: Path, names: list[str]) -> Match:
    """The first of `names` under which llama.cpp tokenises the stress corpus exactly as the
    `tokenizers` library does with `tokenizer_json` (special tokens not parsed: the corpus has none)."""
    from tokenizers import Tokenizer

    from edgeft.models.vocab import VocabOnly

    hf = Tokenizer.from_file(str(tokenizer_json))
    corpus = stress_corpus()
    want = [hf.encode(t, add_special_tokens=False).ids for t in corpus]
    result = Match(None, 0, len(corpus))
    for name in names:
        result.tried += 1
        with VocabOnly(vocab_gguf, name) as tok:
            if tok.vocab is None:  # a name this llama.cpp build does not know after all
                continue
            agree, first_bad = 0, None
            for text, ids in zip(corpus, want, strict=True):
                if tok.tokenize(text) == ids:
                    agree += 1
                elif first_bad is None:
                    first_bad = text
            if agree == len(corpus):
                result.name = name
                return result
            if agree > result.nearest_agrees:
                result.nearest, result.nearest_agrees, result.first_difference = name, agree, first_bad
    return result


__all__ = ["Match", "converter_pre_tokenizers", "match", "stress_corpus"]
