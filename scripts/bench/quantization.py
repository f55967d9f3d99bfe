"""Quantization calibrated on the task: does an importance matrix from the user's own data help,
and what is the smallest GGUF that keeps the model? One run, ratios printed.

On a built example (its merge and train stages; default the real one, SmolLM2-135M-Instruct):
converts the fine-tuned model to f32 GGUF, computes two importance matrices with llama-imatrix
(the training split rendered with the chat template, as `export.gguf.imatrix: auto` does, and a
generic one on general English text of the same token budget), quantizes every type with none,
either or both, and measures KL(fp32 transformers reference || GGUF in llama.cpp), p99 and top-1
on two held-out texts:
- task: the validation conversations, rendered with the chat template (never seen by either matrix),
  every position, and the reply positions alone (those predicting the assistant's answer: what the
  eval scores; the user's question is most of a conversation and costs most of its KL);
- general: Python's language reference prose (pydoc_data.topics, other topics than the generic
  matrix's), in chunks of 256 tokens.

Targets (issue 13): q4_k_m with the task matrix ≤ 0.85× the mean task KL of q4_k_m without one,
and no worse on general text; a file no larger than llama.cpp's plain q4_0 that passes verify's band.

    .venv/bin/edgeft build -c examples/nl2sql-smollm2/edgeft.yaml   # once: the stages it reads
    .venv/bin/python scripts/bench/quantization.py -c examples/nl2sql-smollm2/edgeft.yaml
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

GENERAL_CHUNK = 256
# (label, type, matrix, tensor_types): matrix none | task | generic
VARIANTS: list[tuple[str, str, str, str | dict[str, str] | None]] = [
    ("q8_0", "q8_0", "none", None),
    ("q6_k", "q6_k", "none", None),
    ("q6_k+task", "q6_k", "task", None),
    ("q5_k_m", "q5_k_m", "none", None),
    ("q5_k_m+task", "q5_k_m", "task", None),
    ("q5_k_s+task", "q5_k_s", "task", None),
    ("q4_k_m", "q4_k_m", "none", None),
    ("q4_k_m+generic", "q4_k_m", "generic", None),
    ("q4_k_m+task", "q4_k_m", "task", None),
    ("q4_k_m+task fit", "q4_k_m", "task", "fit"),
    ("q4_k_s+task", "q4_k_s", "task", None),
    ("q4_k_s+task fit", "q4_k_s", "task", "fit"),
    ("q4_0", "q4_0", "none", None),
    ("q4_0+task", "q4_0", "task", None),
    ("iq4_nl", "iq4_nl", "none", None),
    ("iq4_nl+task", "iq4_nl", "task", None),
    ("iq4_xs", "iq4_xs", "none", None),
    ("iq4_xs+generic", "iq4_xs", "generic", None),
    ("iq4_xs+task", "iq4_xs", "task", None),
    ("q3_k_m+task", "q3_k_m", "task", None),
    ("q3_k_s+task", "q3_k_s", "task", None),
    ("iq3_m+task", "iq3_m", "task", None),
    ("iq2_m+task", "iq2_m", "task", None),
    ("q2_k+task", "q2_k", "task", None),
    # SmolLM2's tied 49k × 576 embedding is a fifth of the weights and every type keeps it at q8_0
    # (its q6_K falls back): at q5_1 it frees the bytes for the MLP's down projection at q6_K.
    ("iq4_xs+task mix", "iq4_xs", "task", {"token_embd": "q5_1", "ffn_down": "q6_k", "attn_v": "q8_0"}),
    ("q4_k_m+task emb iq4_nl", "q4_k_m", "task", {"token_embd": "iq4_nl"}),
    # export.gguf.imatrix_tokens: the task matrix from a seeded sample of the split's rows, and from
    # the f16 model instead of the f32 one (each token costs a forward pass of the model it runs on).
    ("q4_k_m+task 8k", "q4_k_m", "task-8192", None),
    ("q4_k_m+task 16k", "q4_k_m", "task-16384", None),
    ("q4_k_m+task f16", "q4_k_m", "task-f16", None),
]


def general_texts(tokenizer: Any, budget: int) -> tuple[str, list[list[int]]]:
    """(text for the generic matrix, held-out chunks): Python's reference prose, split by topic."""
    from pydoc_data.topics import topics

    names = sorted(topics)
    held_out = " ".join(topics[n] for n in names[1::2])
    ids = tokenizer(held_out, add_special_tokens=False)["input_ids"]
    chunks = [ids[i : i + GENERAL_CHUNK] for i in range(0, len(ids) - GENERAL_CHUNK, GENERAL_CHUNK)][:24]
    generic, n = [], 0
    for name in names[0::2]:
        generic.append(topics[name])
        n += len(tokenizer(topics[name], add_special_tokens=False)["input_ids"])
        if n >= budget:
            break
    return "\n".join(generic), chunks


def measure(
    path: Path, reference: dict[str, list[Any]], sequences: dict[str, list[list[int]]], reply_from: list[int]
) -> dict[str, Any]:
    """KL statistics per held-out text, and on the task's reply positions (`reply_from`: each
    conversation's prompt length; the position before it predicts the reply's first token)."""
    from edgeft.judge.kl import kl_stats, summarise
    from edgeft.runtimes.llamacpp import LlamaCppRuntime

    out: dict[str, Any] = {}
    with LlamaCppRuntime(path, n_ctx=1024) as rt:
        for text, seqs in sequences.items():
            stats = [kl_stats(r, rt.logits(s)) for r, s in zip(reference[text], seqs, strict=True)]
            out[text] = summarise(stats)
            if text == "task":
                out["reply"] = summarise(
                    [{k: v[p - 1 : -1] for k, v in s.items()} for s, p in zip(stats, reply_from, strict=True)]
                )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-c", "--config", type=Path, default=Path("examples/nl2sql-smollm2/edgeft.yaml"))
    parser.add_argument("--only", nargs="*", help="labels of the variants to run (default: all)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    from transformers import AutoTokenizer

    from edgeft.core import formats, stages
    from edgeft.core.config import load_config
    from edgeft.data.rows import read_split
    from edgeft.models import gguf_meta
    from edgeft.pipeline.export import gguf, imatrix
    from edgeft.runtimes.hf import HFRuntime

    cfg = load_config(args.config)
    merged = stages.load(cfg, stages.MERGE)
    train = merged.ancestor(stages.TRAIN)
    model_dir = merged.artifact_path("model")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    val = [r["messages"] for r in read_split(train.file("validation.jsonl")) if "messages" in r]
    task = [list(tokenizer.apply_chat_template(m, tokenize=True)) for m in val]
    reply_from = [
        len(tokenizer.apply_chat_template(m[:-1], tokenize=True, add_generation_prompt=True)) for m in val
    ]
    variants = [v for v in VARIANTS if not args.only or v[0] in args.only]
    results: dict[str, Any] = {"model": cfg.base_model, "config": str(args.config), "variants": {}}
    with tempfile.TemporaryDirectory(prefix="edgeft-bench-quant-") as tmp:
        work = Path(tmp)
        f32 = work / "f32.gguf"
        want = gguf_meta.expected(model_dir, cfg.name, cfg.base_model, cfg.license, merged.end_of_turn)
        gguf.convert_with_metadata(model_dir, f32, cfg, want, "f32")
        task_text = imatrix.render_training_text(train.artifact_path("train-split"), tokenizer)
        budget = len(tokenizer(task_text, add_special_tokens=False)["input_ids"])
        generic_text, general = general_texts(tokenizer, budget)
        matrices = {"none": None}
        f16 = work / "f16.gguf"
        gguf.quantize(f32, f16, "f16")
        sampled = {
            n: imatrix.render_training_text(
                train.artifact_path("train-split"), tokenizer, budget=n, seed=cfg.data.seed
            )
            for n in (8192, 16384)
        }
        for label, text, model, tokens in (
            ("task", task_text, f32, None),
            ("generic", generic_text, f32, None),
            ("task-f16", task_text, f16, None),
            *((f"task-{n}", t, f32, n) for n, t in sampled.items()),
        ):
            if not any(m == label for _, _, m, _ in variants):
                continue
            lineage = imatrix.compute(model, text, work / f"{label}.imatrix.gguf", tokens)
            matrices[label] = work / f"{label}.imatrix.gguf"
            results[f"imatrix_{label}"] = lineage
            print(
                f"imatrix {label}: {lineage['tokens']} tokens ({lineage['chunks']} × {lineage['context']}), "
                f"{lineage['seconds']} s",
                file=sys.stderr,
            )
        sequences = {"task": task, "general": general}
        with HFRuntime(model_dir) as ref:
            reference = {k: ref.logits_many(v) for k, v in sequences.items()}
        print(
            f"held out: task {len(task)} conversations, {sum(map(len, task))} tokens; general {len(general)} "
            f"chunks of {GENERAL_CHUNK}",
            file=sys.stderr,
        )
        for label, type_, matrix, fit in variants:
            out = work / f"{label.replace(' ', '_').replace('+', '_')}.gguf"
            start = time.monotonic()
            overrides = gguf.fitted_types(f32, type_, fit, matrices[matrix])
            fallbacks = gguf.quantize(f32, out, type_, imatrix=matrices[matrix], tensor_types=overrides)
            seconds = time.monotonic() - start
            numbers = measure(out, reference, sequences, reply_from)
            band = formats.GGUF_TYPES[type_].band
            row = {
                "type": type_,
                "imatrix": matrix,
                "tensor_types": fit or None,
                "bytes": out.stat().st_size,
                "bits_per_weight": gguf_meta.read(out)[1]["bits_per_weight"],
                "fallbacks": len(fallbacks),
                "quantize_seconds": round(seconds, 1),
                **numbers,
                "in_band": numbers["task"]["kl_mean"] <= band.kl_mean
                and numbers["task"]["top1"] >= band.top1,
            }
            results["variants"][label] = row
            print(
                f"{label:18} {row['bytes'] / 1e6:7.1f} MB {row['bits_per_weight']:5.2f} bpw  task KL "
                f"{numbers['task']['kl_mean']:.4f} p99 {numbers['task']['kl_p99']:.3f} top1 "
                f"{numbers['task']['top1']:.3f}  reply KL {numbers['reply']['kl_mean']:.4f} top1 "
                f"{numbers['reply']['top1']:.3f}  general KL {numbers['general']['kl_mean']:.4f} top1 "
                f"{numbers['general']['top1']:.3f}",
                file=sys.stderr,
            )
            out.unlink()
    v = results["variants"]
    print(
        "\n| variant | MB | bpw | task KL mean | p99 | top-1 | reply KL mean | p99 | general KL mean | top-1 |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for label, r in v.items():
        print(
            f"| {label} | {r['bytes'] / 1e6:.1f} | {r['bits_per_weight']:.2f} | {r['task']['kl_mean']:.4f} | "
            f"{r['task']['kl_p99']:.3f} | {r['task']['top1']:.3f} | {r['reply']['kl_mean']:.4f} | "
            f"{r['reply']['kl_p99']:.3f} | {r['general']['kl_mean']:.4f} | {r['general']['top1']:.3f} |"
        )
    ratios = {}
    for a, b in (
        ("q4_k_m+task", "q4_k_m"),
        ("q4_k_m+generic", "q4_k_m"),
        ("q4_k_m+task", "q4_k_m+generic"),
        ("iq4_xs+task", "iq4_xs"),
        ("iq4_xs+task", "iq4_xs+generic"),
        ("q4_0+task", "q4_0"),
    ):
        if a in v and b in v:
            for text in ("task", "reply", "general"):
                ratios[f"{a} / {b}, {text} KL"] = v[a][text]["kl_mean"] / v[b][text]["kl_mean"]
    print()
    for k, r in ratios.items():
        target = (
            "  (target ≤ 0.85)"
            if k == "q4_k_m+task / q4_k_m, task KL"
            else ("  (target ≤ 1.0)" if k == "q4_k_m+task / q4_k_m, general KL" else "")
        )
        print(f"{k}: {r:.3f}{target}")
    if "q4_0" in v:
        limit = v["q4_0"]["bytes"]
        fits = [(r["task"]["kl_mean"], k) for k, r in v.items() if r["bytes"] <= limit and r["in_band"]]
        print(
            f"no larger than q4_0 ({limit / 1e6:.1f} MB) and within its type's band: "
            + (", ".join(f"{k} (task KL {kl:.4f})" for kl, k in sorted(fits)) or "none")
        )
    results["ratios"] = ratios
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
