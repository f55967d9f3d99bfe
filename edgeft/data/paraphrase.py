"""Paraphrases of the user's turns by a local model ("paraphrase user messages"). Off by default.

Consumes the checked training split and `data.augment`; produces, per training conversation, up
to `data.augment.paraphrases` copies whose user turns (after an alpaca row's fixed instruction)
are rewritten by `paraphrase_model` (the base model unless named): greedy, or sampled at
`paraphrase_temperature` with a seed. Without worked examples a small instruct model answers the
message instead of rewriting it (SmolLM2-135M: "Give the salary of Alice." -> "Alice's salary is
$100,000."), so the prompt is the instruction and three examples (SHOTS). Each candidate is
checked and, when it fails, dropped and counted by reason:

- empty: nothing left but whitespace and quotes;
- unchanged: its source again, case and whitespace aside;
- too-long: over twice its source's length (+20 characters), or more lines: it answered or rambled;
- changed-facts: a number, quoted text or name of the source is missing, or a number or a quote
  is new: the answer depends on them ("above 1000000" -> "above 100,000" is dropped).

Then the data check (data/check.py) checks every augmented copy alike (too long for train.max_seq_length, a duplicate,
a near-duplicate of a validation row), and counts the paraphrases that are near-duplicates of
their own source (kept, as intended). Generation runs in transformers (fp32 on CPU, batches of similar
length, `edgeft.runtimes.hf`); its outputs are cached under a hash of the model's files and of
everything that decides them, so `edgeft data check` and the build after it generate once. The
same data, model, settings and machine give the same bytes; another CPU may break a near tie
differently in float32.
"""

from __future__ import annotations

import json
import logging
import re
import time
from dataclasses import replace
from typing import Any

from edgeft.data.augment import EXACT_SPANS, user_turns
from edgeft.data.rows import Example

log = logging.getLogger(__name__)

# Worked examples shown before each message (a user turn "Rewrite: ..." and its rewrite): a
# question, a command and a quote, each keeping its names, numbers and quoted text.
SHOTS = (
    ("Give me the price of the red car.", "What does the red car cost?"),
    ("How many people live in Paris?", "What is the number of people living in Paris?"),
    ("List the books written by 'Ann Lee' after 1990.", "Which books did 'Ann Lee' write after 1990?"),
)
CHUNK = 16  # messages per generate call (similar lengths, one seed per chunk when sampling)
VERSION = 1  # of the prompt and the checks: part of the cache key
REASONS = ("empty", "unchanged", "too-long", "changed-facts")
_EDGE = ".,;:?!()[]"


def facts(text: str) -> tuple[set[str], set[str]]:
    """(names, numbers and quoted text) of a message: what its answer depends on."""
    names, exact = set(), set()
    for m in EXACT_SPANS.finditer(text):
        span = m.group(0)
        if span[0] in "'\"":
            exact.add(span)
        elif any(c.isdigit() for c in span):
            exact.add(span.strip(_EDGE))
        else:
            names.add(span)
    return names, exact


def clean(output: str) -> str:
    """A generated rewrite without surrounding whitespace, an echoed 'Rewrite:' or wrapping quotes."""
    text = output.strip()
    text = re.sub(r"^(rewrite|rewritten|paraphrase)\s*:\s*", "", text, flags=re.IGNORECASE).strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'" and text.count(text[0]) == 2:
        text = text[1:-1].strip()
    return text


def failed_check(source: str, rewrite: str) -> str | None:
    """The first check (REASONS) `rewrite` fails as a paraphrase of `source`, or None."""
    if not any(c.isalnum() for c in rewrite):
        return "empty"
    if " ".join(rewrite.lower().split()) == " ".join(source.lower().split()):
        return "unchanged"
    if len(rewrite) > 2 * len(source) + 20 or rewrite.count("\n") > source.count("\n"):
        return "too-long"
    names, exact = facts(source)
    _, new_exact = facts(rewrite)  # new names are allowed: a rewrite may start a sentence with one
    if any(n not in rewrite for n in names) or any(x not in rewrite for x in exact) or not new_exact <= exact:
        return "changed-facts"
    return None


def _conversation(instruction: str, message: str) -> list[dict[str, str]]:
    conv = [{"role": "system", "content": instruction}]
    for source, rewrite in SHOTS:
        conv += [{"role": "user", "content": f"Rewrite: {source}"}, {"role": "assistant", "content": rewrite}]
    return conv + [{"role": "user", "content": f"Rewrite: {message}"}]


def _prompt_ids(runtime: Any, instruction: str, message: str) -> list[int]:
    conv = _conversation(instruction, message)
    try:
        text = runtime.render_chat(conv)
    except Exception:  # a template without a system role (Gemma's raises): the instruction leads the turn
        conv = conv[1:]
        conv[0] = {"role": "user", "content": f"{instruction}\n\n{conv[0]['content']}"}
        text = runtime.render_chat(conv)
    return runtime.tokenize(text, add_special=False)


def generate(
    messages: list[tuple[str, int]],
    model_dir: str,
    fingerprint: str,
    augment: Any,
    trust_remote_code: bool = False,
) -> tuple[list[str], bool]:
    """The model's rewrite of each (message, copy number), and whether they came from the cache."""
    from edgeft.core.fileio import hash_json, write_atomic
    from edgeft.core.paths import cache_dir

    key = hash_json(
        {
            "version": VERSION,
            "shots": SHOTS,
            "model": fingerprint,
            "messages": messages,
            "instruction": augment.paraphrase_instruction,
            "temperature": augment.paraphrase_temperature,
            "seed": augment.seed,
        }
    )
    entry = cache_dir() / "paraphrases" / f"{key}.json"
    if entry.is_file():
        return json.loads(entry.read_text(encoding="utf-8")), True
    import torch

    from edgeft.runtimes.hf import HFRuntime

    runtime = HFRuntime(model_dir, trust_remote_code=trust_remote_code)
    ids = [_prompt_ids(runtime, augment.paraphrase_instruction, text) for text, _ in messages]
    lengths = [len(runtime.tokenize(text, add_special=False)) for text, _ in messages]
    order = sorted(range(len(messages)), key=lambda i: (len(ids[i]), i))
    out: list[str] = [""] * len(messages)
    started = time.monotonic()
    for c in range(0, len(order), CHUNK):
        chunk = order[c : c + CHUNK]
        if augment.paraphrase_temperature > 0:
            torch.manual_seed(int(hash_json([augment.seed, c // CHUNK])[:12], 16))
        # Enough room for a rewrite twice as long as the longest message (a longer one fails anyway).
        budget = min(2 * max(lengths[i] for i in chunk) + 16, 512)
        replies = runtime.generate_many([ids[i] for i in chunk], budget, augment.paraphrase_temperature)
        for i, (tokens, _) in zip(chunk, replies, strict=True):
            out[i] = runtime.detokenize(tokens)
        done = min(c + CHUNK, len(order))
        log.info(
            "data.augment: paraphrased %d of %d messages (%.0f s)",
            done,
            len(order),
            time.monotonic() - started,
        )
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(entry, json.dumps(out, ensure_ascii=False))
    except OSError as e:  # a cache that cannot be written costs a second generation, nothing else
        log.warning("data.augment: could not cache the paraphrases in %s (%s)", entry.parent, e)
    return out, False


def with_paraphrases(
    train: list[Example], augment: Any, model: str, model_dir: str, trust_remote_code: bool = False
) -> tuple[list[Example], dict[str, Any]]:
    """`augment.paraphrases` rewritten copies of each training conversation that pass the checks
    (text rows are not augmented), and the record of what was made and dropped."""
    from edgeft.models.base import fingerprint

    copies = augment.paraphrases
    jobs: list[tuple[int, int, int]] = []  # (example, turn, copy)
    for n, e in enumerate(train):
        for k in range(copies):
            jobs += [(n, i, k) for i, _, body in user_turns(e) if body.strip()]
    bodies = {(n, i): body for n, e in enumerate(train) for i, _, body in user_turns(e)}
    started = time.monotonic()
    rewrites, cached = (
        generate(
            [(bodies[n, i], k) for n, i, k in jobs],
            model_dir,
            fingerprint(model, model_dir),
            augment,
            trust_remote_code,
        )
        if jobs
        else ([], False)
    )
    verdicts: dict[tuple[int, int], dict[int, str]] = {}  # (example, copy) -> turn -> rewrite or failure
    failures: dict[tuple[int, int], str] = {}
    for (n, i, k), output in zip(jobs, rewrites, strict=True):
        text = clean(output)
        reason = failed_check(bodies[n, i], text)
        if reason:
            failures.setdefault((n, k), reason)
        verdicts.setdefault((n, k), {})[i] = text
    added: list[Example] = []
    dropped = dict.fromkeys(REASONS, 0)
    samples: list[dict[str, str]] = []
    for (n, k), turns in verdicts.items():
        if (n, k) in failures:  # every user turn of a copy must pass
            dropped[failures[n, k]] += 1
            continue
        e = train[n]
        messages = [dict(m) for m in e.messages or []]
        for i, prefix, _ in user_turns(e):
            if i in turns:
                messages[i]["content"] = prefix + turns[i]
        copy = replace(e, messages=messages, augmented="paraphrase", source=e.where)
        if len(samples) < 3:
            samples.append({"source": bodies[n, min(turns)], "paraphrase": turns[min(turns)]})
        added.append(copy)
    record = {
        "copies": copies,
        "model": model,
        "temperature": augment.paraphrase_temperature,
        "seed": augment.seed,
        "candidates": len(verdicts),
        "rows_added": len(added),
        "dropped": {r: c for r, c in dropped.items() if c},
        "samples": samples,
        "cached": cached,
        "seconds": round(time.monotonic() - started, 1),
    }
    return added, record
