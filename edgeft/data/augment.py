"""Augmentation of the training split: noisy copies of the user's turns ("add realistic typos and
variations for robustness"), seeded and reproducible byte for byte. Off by default.

Consumes the training examples after the split and the data checks (so that a copy is never
reported as a near-duplicate of its source, and the validation split is never touched);
produces the same examples plus, per example, `data.augment.typos` copies whose user turns carry
keyboard-neighbour substitutions, dropped, doubled or swapped letters at `typo_rate` per letter,
and sometimes case and whitespace noise. What must stay exact stays: digits, words written with a
capital inside a sentence (names: 'Oslo'), quoted text ('...', "..."), the system and
assistant turns, and an alpaca row's instruction (the application's fixed text, not typed).
Each copy's randomness comes from (seed, source row, copy number) alone, so the same data and
seed give the same bytes on any machine, in any order. Paraphrases: edgeft/data/paraphrase.py.
"""

from __future__ import annotations

import random
import re
from dataclasses import replace
from typing import Any

from edgeft.data.rows import Example

# QWERTY neighbours of each letter (same row and the rows above and below).
_ROWS = ("qwertyuiop", "asdfghjkl", "zxcvbnm")
NEIGHBOURS: dict[str, str] = {}
for r, row in enumerate(_ROWS):
    for c, ch in enumerate(row):
        near = {row[i] for i in (c - 1, c + 1) if 0 <= i < len(row)}
        for other in (r - 1, r + 1):
            if 0 <= other < len(_ROWS):
                near |= {_ROWS[other][i] for i in (c - 1, c, c + 1) if 0 <= i < len(_ROWS[other])}
        NEIGHBOURS[ch] = "".join(sorted(near))

# Spans left exactly as written: quoted text, numbers, and capitalised words after a sentence's start.
EXACT_SPANS = re.compile(r"'[^'\n]*'|\"[^\"\n]*\"|\S*\d\S*|(?<=[a-z,;:] )[A-Z]\w*")
EDITS = ("neighbour", "drop", "double", "swap")


def _noisy_word(word: str, rate: float, rng: random.Random) -> str:
    out: list[str] = []
    i = 0
    while i < len(word):
        ch = word[i]
        if not ch.isalpha() or ch.lower() not in NEIGHBOURS or rng.random() >= rate:
            out.append(ch)
            i += 1
            continue
        edit = rng.choice(EDITS)
        if edit == "neighbour":
            sub = rng.choice(NEIGHBOURS[ch.lower()])
            out.append(sub.upper() if ch.isupper() else sub)
        elif edit == "double":
            out += [ch, ch]
        elif edit == "swap" and i + 1 < len(word) and word[i + 1].isalpha():
            out += [word[i + 1], ch]
            i += 1
        elif edit == "drop" and len(word) > 2:
            pass
        else:
            out.append(ch)
        i += 1
    return "".join(out)


def noisy(text: str, rate: float, rng: random.Random) -> str:
    """`text` with typos at `rate` per letter outside the protected spans, and now and then a
    lower-cased first letter, a missing final full stop or a doubled space."""
    pieces: list[str] = []  # even indices: free text (noised); odd: protected spans, as written
    last = 0
    for m in EXACT_SPANS.finditer(text):
        pieces += [_noisy_span(text[last : m.start()], rate, rng), m.group(0)]
        last = m.end()
    pieces.append(_noisy_span(text[last:], rate, rng))
    spaces = [(i, j) for i in range(0, len(pieces), 2) for j, ch in enumerate(pieces[i]) if ch == " "]
    if spaces and rng.random() < 0.2:
        i, j = rng.choice(spaces)
        pieces[i] = pieces[i][:j] + " " + pieces[i][j:]
    if pieces[0][:1].isupper() and rng.random() < 0.3:
        pieces[0] = pieces[0][0].lower() + pieces[0][1:]
    if pieces[-1].endswith((".", "?")) and rng.random() < 0.3:
        pieces[-1] = pieces[-1][:-1]
    return "".join(pieces)


def _noisy_span(span: str, rate: float, rng: random.Random) -> str:
    return re.sub(r"[A-Za-z]+", lambda m: _noisy_word(m.group(0), rate, rng), span)


def user_turns(e: Example) -> list[tuple[int, str, str]]:
    """(index, fixed prefix, editable text) of each user turn of a conversation: what a user
    typed, after the row's fixed instruction (`Example.fixed_prefix`) where it has one. A tool's
    results, rendered as a user turn (edgeft.data.tools), are not typed by a user: left out."""
    from edgeft.data.tools import RESULT_OPEN

    out = []
    for i, m in enumerate(e.messages or []):
        if m["role"] != "user" or (e.tools and m["content"].startswith(RESULT_OPEN)):
            continue
        prefix = e.fixed_prefix if e.fixed_prefix and m["content"].startswith(e.fixed_prefix) else ""
        out.append((i, prefix, m["content"][len(prefix) :]))
    return out


def with_typos(
    train: list[Example], copies: int, rate: float, seed: int
) -> tuple[list[Example], dict[str, Any]]:
    """`copies` noisy copies of each training conversation (text rows are not augmented), and the
    record of what was added and dropped."""
    added: list[Example] = []
    unchanged = 0
    for e in train:
        if e.messages is None:
            continue
        for k in range(copies):
            rng = random.Random(
                f"edgeft-typos:{seed}:{e.content()}:{k}"
            )  # str seeds hash with sha512: stable
            messages = [dict(m) for m in e.messages]
            for i, prefix, body in user_turns(e):
                messages[i]["content"] = prefix + noisy(body, rate, rng)
            if messages == e.messages:
                unchanged += 1  # a short turn that drew no edit: a plain duplicate adds nothing
                continue
            added.append(replace(e, messages=messages, augmented="typos", source=e.where))
    record = {
        "copies": copies,
        "rate": rate,
        "seed": seed,
        "rows_added": len(added),
        "dropped": {"unchanged": unchanged} if unchanged else {},
    }
    return added, record
