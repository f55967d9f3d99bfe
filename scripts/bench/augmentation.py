"""Does augmentation help? The real example trained as given, with `data.augment.typos`, with
`data.augment.paraphrases` (by the base model itself, greedy) and with both, each scored on its
clean held-out questions and on the same questions typed with typos.

`examples/nl2sql-smollm2/typos.jsonl` holds the example's 40 validation questions as a person
typed them (dropped, doubled and swapped letters, missing capitals and full stops; names and
numbers as written, since the answer depends on them), written by hand, not by edgeft's noise
function, with the reference SQL. Every run uses the example's config (same split, steps and
batch: an augmented run sees the same number of examples, part of them copies); the
fine-tuned model (transformers, greedy, as eval does) answers both sets.

    .venv/bin/python scripts/bench/augmentation.py -c examples/nl2sql-smollm2/edgeft.yaml
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from methods import run_method

REPO = Path(__file__).resolve().parents[2]
VARIANTS = {
    "plain": [],
    "typos": ["data.augment.typos={copies}"],
    # Greedy: one paraphrase per conversation ({copies} > 1 samples at temperature 0.7).
    "paraphrases": ["data.augment.paraphrases={copies}", "data.augment.paraphrase_temperature={temperature}"],
    "typos+paraphrases": [
        "data.augment.typos={copies}",
        "data.augment.paraphrases={copies}",
        "data.augment.paraphrase_temperature={temperature}",
    ],
}


def typed_set(path: Path, validation: Path) -> tuple[list[list[dict]], list[str]]:
    """The typed questions as prompts, each checked to be a held-out row of this run."""
    held_out = {
        r["messages"][-2]["content"]: r["messages"][:-2]
        for r in map(json.loads, validation.read_text().splitlines())
    }
    prompts, references = [], []
    for row in map(json.loads, path.read_text().splitlines()):
        clean = f"{row['instruction']}\n\n{row['clean']}"
        if clean not in held_out:
            sys.exit(f"{path}: {row['clean']!r} is not a validation question of this split")
        prompts.append(
            [*held_out[clean], {"role": "user", "content": f"{row['instruction']}\n\n{row['input']}"}]
        )
        references.append(row["output"])
    return prompts, references


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-c", "--config", type=Path, default=REPO / "examples" / "nl2sql-smollm2" / "edgeft.yaml")
    ap.add_argument("--typos", type=Path, default=REPO / "examples" / "nl2sql-smollm2" / "typos.jsonl")
    ap.add_argument("--copies", type=int, default=1)
    ap.add_argument("--only", nargs="+", choices=list(VARIANTS), help="only these variants")
    args = ap.parse_args()
    from edgeft.pipeline.evaluate import answer, score
    from edgeft.runtimes.hf import HFRuntime

    rows = []
    with tempfile.TemporaryDirectory(prefix="edgeft-augment-") as tmp:
        for name, sets in VARIANTS.items():
            if args.only and name not in args.only:
                continue
            temperature = "0" if args.copies == 1 else "0.7"
            sets = [
                s.replace("{copies}", str(args.copies)).replace("{temperature}", temperature) for s in sets
            ]
            label = f"{name} x{args.copies}" if sets else name
            run = name.replace("+", "-")  # a config name: letters, digits, '-', '_', '.'
            row = run_method(args.config.resolve(), run, sets, Path(tmp))
            merged = Path(tmp) / f"bench-{run}" / "merge"
            prompts, references = typed_set(args.typos, merged / "validation.jsonl")
            outputs = answer(HFRuntime(merged / "model"), prompts, 64, f"{label}, typed questions")
            typed = score(outputs, references, None)
            train = json.loads((Path(tmp) / f"bench-{run}" / "train" / "edgeft.json").read_text())
            rows.append(
                {
                    "variant": label,
                    "clean": row["exact"],
                    "typed": typed["exact_match"],
                    "typed_chrf": typed["chrf"],
                    "val_loss": row["val_loss"],
                    "added": train["data"].get("augmented_rows", 0),
                }
            )
            print(
                f"{label}: clean exact {row['exact']:.3f}, typed exact {typed['exact_match']:.3f} "
                f"(chrF {typed['chrf']:.1f}), val loss {row['val_loss']:.3f}",
                file=sys.stderr,
                flush=True,
            )
    print(f"\n{len(references)} held-out questions, clean and typed")
    print("| training data | rows added | val loss | exact, clean | exact, typed | chrF, typed |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['variant']} | {r['added']} | {r['val_loss']:.3f} | {r['clean']:.3f} | {r['typed']:.3f} | "
            f"{r['typed_chrf']:.1f} |"
        )


if __name__ == "__main__":
    main()
