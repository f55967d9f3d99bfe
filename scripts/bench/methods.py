"""Training methods on the real example: LoRA, DoRA and full fine-tuning (QLoRA with --qlora),
one run each, ratios against LoRA printed at the end.

Each method trains, merges and evaluates the example's config (its data, steps, batch and
sequence length; the method's default learning rate) in its own `edgeft` processes, so that the
training process's peak memory is its own: `edgeft train` records seconds per step and peak
resident memory, `edgeft eval` the held-out scores and the forgetting check on the general prompts
(eval.general_prompts: the fine-tuned model's chrF against the base model's). No export: the
methods differ before it, and every export is verified against the merged model the same way.

    .venv/bin/python scripts/bench/methods.py -c examples/nl2sql-smollm2/edgeft.yaml
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
EDGEFT = [sys.executable, "-m", "edgeft"]
METHODS = {"lora": [], "dora": ["train.dora=true"], "full": ["train.method=full"]}


def run_method(config: Path, label: str, sets: list[str], work: Path) -> dict:
    overrides = [
        f"name=bench-{label}",
        f"workdir={work}",
        f"dist_dir={work / 'dist'}",
        "export.gguf.types=[]",
        "export.gguf.lora=false",
        "export.gguf.tensor_types={}",
        "export.onnx.types=[]",
        *sets,
    ]
    args = [x for s in overrides for x in ("--set", s)]
    for command in (["train"], ["merge"], ["eval"]):
        proc = subprocess.run(
            [*EDGEFT, "-q", *command, "-c", str(config), *args],
            capture_output=True,
            text=True,
            env={**os.environ, "HF_HUB_OFFLINE": "1"},
        )
        if proc.returncode != 0:
            sys.exit(f"{label}: edgeft {command[0]} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    run = work / f"bench-{label}"
    train = json.loads((run / "train" / "edgeft.json").read_text())
    results = json.loads((run / "eval" / "results.json").read_text())
    m = train["metrics"]
    general = results.get("general") or {}
    fine = results["models"]["fine-tuned"]["scores"]
    return {
        "method": label,
        "learning_rate": train["config"]["train"]["learning_rate"],
        "trainable": m["trainable_parameters"],
        "steps": m["steps"],
        "s_per_step": m["train_seconds"] / max(m["steps"], 1),
        "peak_mb": m["peak_memory_mb"],
        "val_loss": m["val_loss"],
        "base_val_loss": m["base_val_loss"],
        "exact": fine["exact_match"],
        "format": fine.get("format"),
        "chrf": fine["chrf"],
        "base_exact": results["models"]["base"]["scores"]["exact_match"],
        "general_chrf": (general.get("scores") or {}).get("fine-tuned", {}).get("chrf"),
        "general_base_chrf": (general.get("scores") or {}).get("base", {}).get("chrf"),
        "general_drop": general.get("chrf_drop"),
        "examples": results["examples"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-c", "--config", type=Path, default=REPO / "examples" / "nl2sql-smollm2" / "edgeft.yaml")
    ap.add_argument("--qlora", action="store_true", help="also QLoRA (nf4 base; slow on a CPU)")
    ap.add_argument(
        "--only", nargs="+", choices=[*METHODS, "qlora"], help="only these methods (ratios: to the first)"
    )
    ap.add_argument("--json", type=Path, help="also write the rows here")
    args = ap.parse_args()
    methods = dict(
        METHODS, **({"qlora": ["train.method=qlora"]} if args.qlora or "qlora" in (args.only or []) else {})
    )
    if args.only:
        methods = {k: methods[k] for k in args.only}
    rows = []
    with tempfile.TemporaryDirectory(prefix="edgeft-methods-") as tmp:
        for label, sets in methods.items():
            row = run_method(args.config.resolve(), label, sets, Path(tmp))
            rows.append(row)
            print(
                f"{label:<6} lr {row['learning_rate']:g}  {row['trainable']:>11,} trainable  "
                f"{row['s_per_step']:.2f} s/step  peak {row['peak_mb']:.0f} MB  val loss {row['base_val_loss']:.3f} → "
                f"{row['val_loss']:.3f}  exact {row['exact']:.3f} (base {row['base_exact']:.3f})  "
                f"general chrF {row['general_chrf']} (base {row['general_base_chrf']}, drop {row['general_drop']})",
                file=sys.stderr,
                flush=True,
            )
    lora = rows[0]
    print(f"\n{rows[0]['examples']} held-out examples; ratios against {lora['method']}")
    print(
        "| method | trainable | s/step | peak MB | val loss | exact | format | general chrF (base) | "
        "s/step × | peak × |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        general = (
            f"{r['general_chrf']:.1f} ({r['general_base_chrf']:.1f}, drop {r['general_drop']:.1%})"
            if r["general_chrf"] is not None
            else "–"
        )
        fmt = f"{r['format']:.3f}" if r["format"] is not None else "–"
        print(
            f"| {r['method']} (lr {r['learning_rate']:g}) | {r['trainable']:,} | {r['s_per_step']:.2f} | "
            f"{r['peak_mb']:.0f} | {r['val_loss']:.3f} | {r['exact']:.3f} | {fmt} | {general} | "
            f"{r['s_per_step'] / lora['s_per_step']:.2f} | {r['peak_mb'] / lora['peak_mb']:.2f} |"
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
