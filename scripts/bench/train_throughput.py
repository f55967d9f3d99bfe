"""Training throughput and peak memory: edgeft's training setup against the plain tutorial recipe.

Both runs use the same random-weight model of a real shape (training speed does not depend on
weight values), the same data (the bundled nl2sql example), LoRA rank, batch size and number
of steps. "plain" is trl's SFTTrainer with its default SFTConfig (padded batches, no packing);
"edgeft" is what `edgeft train` builds (`edgeft.pipeline.train.sft_config` and `edgeft.models.base.load_base`). Each runs in
its own process, so peak memory is its own; the ratios are printed at the end.

    .venv/bin/python scripts/bench/train_throughput.py --shape cpu-small --steps 12
    .venv/bin/python scripts/bench/train_throughput.py --shape 1b --quantization nf4 --steps 30   # GPU

Shapes: cpu-tiny / cpu-small run on a laptop CPU in a minute; 1b (Llama-3.2-1B) and 8b
(Llama-3.1-8B) want a GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import peak_rss

REPO = Path(__file__).resolve().parents[2]
SHAPES = {
    "cpu-tiny": dict(
        hidden_size=256,
        intermediate_size=512,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=8192,
    ),
    "cpu-small": dict(
        hidden_size=512,
        intermediate_size=1536,
        num_hidden_layers=4,
        num_attention_heads=8,
        num_key_value_heads=4,
        vocab_size=32768,
    ),
    "1b": dict(
        hidden_size=2048,
        intermediate_size=8192,
        num_hidden_layers=16,
        num_attention_heads=32,
        num_key_value_heads=8,
        vocab_size=128256,
    ),
    "8b": dict(
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        vocab_size=128256,
    ),
}


def make_model(shape: str, cache: Path) -> Path:
    """A random-weight Llama of `shape` with the tiny kit's tokenizer (ids fit any larger vocab)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from edgeft.models.tiny import cached_tiny_model

    out = cache / f"bench-{shape}"
    if (out / "config.json").exists():
        return out
    tok = AutoTokenizer.from_pretrained(cached_tiny_model("micro", 0))
    torch.manual_seed(0)
    dtype = torch.bfloat16 if torch.cuda.is_available() else torch.float32
    config = LlamaConfig(
        **SHAPES[shape],
        max_position_embeddings=4096,
        tie_word_embeddings=False,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = LlamaForCausalLM(config).to(dtype)
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return out


def _counting_callback(result: dict):
    """Times steps 2..N (step 1 pays for warm-up) and counts their non-padding tokens."""
    from transformers import TrainerCallback

    class Timer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            if state.global_step == 1:
                result["t0"] = time.perf_counter()
                result["tokens_at_t0"] = result.get("tokens", 0)

        def on_step_end(self, args, state, control, **kw):
            result["t1"] = time.perf_counter()

    return Timer()


def run_one(recipe: str, model_dir: Path, args: argparse.Namespace) -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from edgeft.core.config import parse_config
    from edgeft.data.check import analyse
    from edgeft.models.base import load_base
    from edgeft.pipeline.train import sft_config, training_rows

    cfg = parse_config(
        {
            "name": "bench",
            "base_model": str(model_dir),
            "data": {"train": str(args.data)},
            "train": {
                "quantization": args.quantization,
                "lora_r": args.rank,
                "batch_size": args.batch_size,
                "max_steps": args.steps,
                "max_seq_length": args.max_length,
                "eval_steps": 10**6,
            },
        }
    )
    tok = AutoTokenizer.from_pretrained(model_dir)
    report = analyse(args.data, val_ratio=0.1, seed=0)
    train = Dataset.from_list([e.to_json() for e in report.train])
    val = Dataset.from_list([e.to_json() for e in report.validation][:16])
    out = Path(tempfile.mkdtemp())
    lora = LoraConfig(
        r=args.rank, lora_alpha=2 * args.rank, target_modules="all-linear", task_type="CAUSAL_LM"
    )
    if recipe == "plain":
        from transformers import AutoModelForCausalLM, BitsAndBytesConfig

        kwargs = {}
        if args.quantization != "none":
            kwargs["quantization_config"] = BitsAndBytesConfig(
                load_in_4bit=True, bnb_4bit_quant_type=args.quantization
            )
        model = AutoModelForCausalLM.from_pretrained(model_dir, **kwargs)
        targs = SFTConfig(
            output_dir=str(out),
            per_device_train_batch_size=args.batch_size,
            max_steps=args.steps,
            max_length=args.max_length,
            report_to=[],
            save_strategy="no",
            eval_strategy="no",
            use_cpu=not torch.cuda.is_available(),
            **({} if torch.cuda.is_available() else {"bf16": False}),
        )
    else:
        model = load_base(str(model_dir), cfg)
        rows, val_rows, _ = training_rows(report.train, report.validation[:16], tok, True)
        train, val = Dataset.from_list(rows), Dataset.from_list(val_rows)
        targs = sft_config(cfg, out)
        targs.save_strategy = targs.eval_strategy = "no"
        targs.load_best_model_at_end = False
    result: dict = {}
    trainer = SFTTrainer(
        model=model,
        args=targs,
        train_dataset=train,
        eval_dataset=val,
        processing_class=tok,
        peft_config=lora,
        callbacks=[_counting_callback(result)],
    )
    collate = trainer.data_collator

    def counting(features):
        batch = collate(features)
        mask = batch.get("attention_mask")
        result["tokens"] = result.get("tokens", 0) + int(
            mask.sum() if mask is not None else batch["input_ids"].numel()
        )
        return batch

    trainer.data_collator = counting
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    trainer.train()
    val_loss = trainer.evaluate()["eval_loss"]
    tokens = result["tokens"] - result["tokens_at_t0"]
    peak = torch.cuda.max_memory_allocated() if torch.cuda.is_available() else peak_rss()
    return {
        "recipe": recipe,
        "tokens_per_s": tokens / (result["t1"] - result["t0"]),
        "peak_bytes": peak,
        "val_loss": val_loss,
        "device": "cuda" if torch.cuda.is_available() else "cpu",
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", choices=SHAPES, default="cpu-tiny")
    p.add_argument("--quantization", choices=["none", "nf4"], default="none")
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--max-length", type=int, default=512)
    p.add_argument("--data", type=Path, default=REPO / "examples" / "nl2sql" / "data" / "nl2sql.jsonl")
    p.add_argument(
        "--cache", type=Path, default=Path(os.environ.get("EDGEFT_CACHE", Path.home() / ".cache/edgeft"))
    )
    p.add_argument("--_run", choices=["plain", "edgeft"], help=argparse.SUPPRESS)
    p.add_argument("--_model", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args._run:
        print(json.dumps(run_one(args._run, args._model, args)))
        return
    model_dir = make_model(args.shape, args.cache)
    results = {}
    for recipe in ("plain", "edgeft"):
        cmd = [
            sys.executable,
            __file__,
            "--_run",
            recipe,
            "--_model",
            str(model_dir),
            *[a for a in sys.argv[1:]],
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            sys.exit(f"{recipe} run failed:\n{proc.stderr[-3000:]}")
        results[recipe] = json.loads(proc.stdout.strip().splitlines()[-1])
    plain, ours = results["plain"], results["edgeft"]
    print(
        f"shape {args.shape}, quantization {args.quantization}, {args.steps} steps, batch {args.batch_size}, "
        f"LoRA r={args.rank}, device {ours['device']}"
    )
    for r in (plain, ours):
        print(
            f"  {r['recipe']:<7} {r['tokens_per_s']:10.1f} tokens/s  peak {r['peak_bytes'] / 2**30:7.2f} GiB  "
            f"val loss {r['val_loss']:.4f}"
        )
    print(
        f"ratio edgeft/plain: tokens/s {ours['tokens_per_s'] / plain['tokens_per_s']:.2f}x, "
        f"peak memory {ours['peak_bytes'] / plain['peak_bytes']:.2f}x "
        f"(target on GPU: >= 1.5x tokens/s at <= 0.7x memory)"
    )


if __name__ == "__main__":
    main()
