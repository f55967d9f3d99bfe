"""How `edgeft data check` scales: rows per second and peak memory at 10k, 100k and 1M rows.

Two kinds of generated chat rows (one user turn, one answer):
- `chat`: words drawn with Zipf frequencies from a 20,000-word vocabulary, as in real text (a few
  words in most rows), with 1% exact and 1% near-duplicate copies (a word changed) mixed in;
- `templated`: the worst case for near-duplicates, rows one number apart ("What is the salary of
  employee 1234?" → "SELECT salary FROM employees WHERE id = 1234;").

Each size runs in a fresh process (its own peak memory), through the same `analyse` the command,
`train` and `build` use. The last column is the cost per row relative to the smallest size: ~1
means linear growth (the old pairwise near-duplicate search grew with the rows: 20,000 rows
took 237 s, 200,000 did not finish in 900 s).

    .venv/bin/python scripts/bench/datacheck.py                          # 10k, 100k, 1M; both kinds
    .venv/bin/python scripts/bench/datacheck.py --sizes 10000 200000 --kinds chat --model tiny:micro
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import subprocess
import sys
import tempfile
from pathlib import Path

VOCABULARY = 20_000


def rows(kind: str, n: int, seed: int = 0):
    rng = random.Random(seed)
    if kind == "templated":
        for i in range(n):
            yield f"What is the salary of employee {i}?", f"SELECT salary FROM employees WHERE id = {i};"
        return
    words = [
        "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 9)))
        for _ in range(VOCABULARY)
    ]
    cumulative = list(itertools.accumulate(1 / (rank + 1) for rank in range(VOCABULARY)))
    made: list[tuple[str, str]] = []
    for _ in range(n):
        roll = rng.random()
        if made and roll < 0.01:  # an exact duplicate
            yield made[rng.randrange(len(made))]
            continue
        if made and roll < 0.02:  # a near-duplicate: one word of the answer changed
            q, a = made[rng.randrange(len(made))]
            words_a = a.split()
            words_a[rng.randrange(len(words_a))] = rng.choice(words)
            yield q, " ".join(words_a)
            continue
        q = " ".join(rng.choices(words, cum_weights=cumulative, k=rng.randint(6, 30))) + "?"
        a = " ".join(rng.choices(words, cum_weights=cumulative, k=rng.randint(10, 60))) + "."
        if len(made) < 10_000:
            made.append((q, a))
        yield q, a


def write(path: Path, kind: str, n: int) -> None:
    with path.open("w", encoding="utf-8") as f:
        for q, a in rows(kind, n):
            f.write(
                json.dumps(
                    {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
                )
                + "\n"
            )


_CHILD = """
import json, sys, time
from pathlib import Path
from edgeft.data.check import analyse
from edgeft.pipeline.train import peak_resident_bytes
tokenizer = None
if sys.argv[2]:
    from transformers import AutoTokenizer
    from edgeft.models.base import resolve_base
    tokenizer = AutoTokenizer.from_pretrained(resolve_base(sys.argv[2], None, False))
start = time.perf_counter()
report = analyse(Path(sys.argv[1]), tokenizer=tokenizer, max_length=2048)
near = report.info["near_duplicates"]
print(json.dumps({"seconds": time.perf_counter() - start, "peak_bytes": peak_resident_bytes(),
                  "warnings": len(report.warnings), "not_fully_compared": near["rows_not_fully_compared"]}))
"""


def measure(path: Path, model: str | None) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, str(path), model or ""], capture_output=True, text=True, check=False
    )
    if done.returncode:
        sys.exit(done.stderr)
    return json.loads(done.stdout.splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--kinds", nargs="+", choices=["chat", "templated"], default=["chat", "templated"])
    ap.add_argument("--model", help="also measure lengths under this model's template (e.g. tiny:micro)")
    args = ap.parse_args()
    print(
        f"{'kind':<10} {'rows':>9} {'seconds':>8} {'rows/s':>8} {'peak MB':>8} {'warnings':>9} "
        f"{'not fully compared':>19} {'cost/row vs first':>18}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        for kind in args.kinds:
            first = None
            for n in args.sizes:
                path = Path(tmp) / f"{kind}-{n}.jsonl"
                write(path, kind, n)
                r = measure(path, args.model)
                per_row = r["seconds"] / n
                first = first or per_row
                print(
                    f"{kind:<10} {n:>9,} {r['seconds']:>8.1f} {n / r['seconds']:>8,.0f} {r['peak_bytes'] / 1e6:>8.0f} "
                    f"{r['warnings']:>9,} {r['not_fully_compared']:>19,} {per_row / first:>18.2f}",
                    flush=True,
                )
                path.unlink()


if __name__ == "__main__":
    main()
