"""Merge the adapter into the base: the reference model every export is checked against.
After a full fine-tune (train.method: full) there is no adapter: the trained model is the reference.

Consumes a `train` stage (or the `align` stage made from it, when the config tunes preferences);
produces a `merge` stage: `model/`, an HF model directory
(safetensors, tokenizer, chat template, generation config whose EOS includes the template's
end-of-turn token), the validation split, and what later stages need from training (the
adapter, the resolved base, the data record, the training metrics), so that they read this
stage only. The merged weights are never the 4-bit ones:

- `full-precision` (default): the adapter is merged into the original weights, reloaded;
- `dequantized`: into the NF4/FP4 weights the adapter was trained against, dequantized.

After QLoRA both are built and compared with what was actually trained (the adapter on the
4-bit base) on validation conversations: KL divergence and top-1 agreement per strategy go into
the manifest, whichever is chosen.

    edgeft merge -c examples/nl2sql/edgeft.yaml
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgeft.core import formats, stages
from edgeft.core.config import MERGE_STRATEGIES, Config, parse_config
from edgeft.core.errors import ToolError
from edgeft.core.fileio import hash_json
from edgeft.core.manifest import Stage
from edgeft.core.workdir import in_session
from edgeft.models.base import end_of_turn, load_base, resolve_base
from edgeft.pipeline.align import PAIRS_VALIDATION

log = logging.getLogger(__name__)


# What this stage hands over besides the model (manifest.HANDED_OVER, the adapter): a merge stage
# written before it carried them is made again by `edgeft build`.
HANDOVER = 2


def inputs_hash(cfg: Config, upstream: Sequence[Stage]) -> str:
    """The trained weights' inputs (the train stage's, or the align stage's after it), the merge
    section and what the stage hands over."""
    trained = upstream[-1]
    return hash_json([trained.inputs_hash, cfg.section("merge"), HANDOVER])


def _logits(model: Any, sequences: list[list[int]]) -> list[np.ndarray]:
    import torch

    with torch.no_grad():
        return [model(torch.tensor([ids])).logits[0].float().numpy() for ids in sequences]


def _apply(model: Any, adapter_dir: Path) -> Any:
    from peft import PeftModel

    try:
        return PeftModel.from_pretrained(model, adapter_dir).merge_and_unload()
    except (ValueError, RuntimeError, KeyError) as e:
        raise ToolError(f"{adapter_dir}: cannot apply the adapter to the base: {e}") from e


def _full_precision_base(base: str, cfg: Config) -> Any:
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(
        base,
        dtype=getattr(torch, cfg.merge.dtype),
        use_safetensors=True,
        trust_remote_code=cfg.trust_remote_code,
    )


def _dequantized_weights(quantized: Any) -> dict[str, Any]:
    """Each 4-bit linear layer's weight as the adapter saw it, dequantized to float32."""
    import bitsandbytes as bnb

    out = {}
    for name, module in quantized.named_modules():
        if isinstance(module, bnb.nn.Linear4bit):
            out[name] = bnb.functional.dequantize_4bit(module.weight.data, module.weight.quant_state).float()
    return out


def compare_strategies(
    base: str,
    adapter_dir: Path,
    cfg: Config,
    train_cfg: Config,
    tokenizer: Any,
    conversations: list[list[dict[str, str]]],
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Both merge strategies against the adapter on the 4-bit base; return (metrics, weights)."""
    from peft import PeftModel

    from edgeft.judge.kl import distinct_contexts, kl_stats, only, summarise

    sequences = [tokenizer.apply_chat_template(c, tokenize=True) for c in conversations]
    quantized = load_base(base, train_cfg)  # exactly as in training: same quantization settings
    dq_weights = _dequantized_weights(quantized)
    trained = PeftModel.from_pretrained(quantized, adapter_dir).eval()
    reference = _logits(trained, sequences)
    del trained, quantized
    metrics: dict[str, Any] = {
        "reference": f"adapter on the {train_cfg.train.quantization} base, as trained",
        "prompts": len(sequences),
    }
    models = {}
    for strategy in MERGE_STRATEGIES:
        model = _full_precision_base(base, cfg)
        if strategy == "dequantized":
            for name, weight in dq_weights.items():
                model.get_submodule(name).weight.data = weight.to(model.dtype)
        model = _apply(model, adapter_dir).eval()
        distinct = distinct_contexts(sequences)
        stats = summarise(
            [
                only(kl_stats(r, o), keep)
                for r, o, keep in zip(reference, _logits(model, sequences), distinct, strict=True)
            ]
        )
        metrics[strategy] = {k: stats[k] for k in ("kl_mean", "kl_max", "top1")}
        log.info("merge %s vs trained: KL mean %.3g, top-1 %.3f", strategy, stats["kl_mean"], stats["top1"])
        if strategy == cfg.merge.strategy:
            models[strategy] = model
    return metrics, models


@in_session
def merge_adapter(
    cfg: Config,
    train_dir: Path | None = None,
    out_dir: Path | None = None,
    *,
    force: bool = False,
    replace_own: bool = False,
) -> Stage:
    """Merge the trained adapter (the train stage's, or after preference tuning the align stage's)
    into the base; return the published merge stage."""
    train = stages.trained(cfg, train_dir)
    from transformers import AutoTokenizer, GenerationConfig

    from edgeft.data.rows import read_conversations

    out_dir = stages.directory(cfg, stages.MERGE, out_dir)
    base = train.resolved_base or resolve_base(cfg.base_model, cfg.root, cfg.trust_remote_code)
    full = train.has("model")  # train.method full: the trained model, no adapter
    trained_dir = train.artifact_path("model" if full else "adapter")
    quantization = "none" if full else train.artifact("adapter").get("quantization", "none")
    tokenizer = AutoTokenizer.from_pretrained(trained_dir)
    with stages.writer(
        cfg, stages.MERGE, out_dir, inputs_hash(cfg, [train]), train, force=force, replace_own=replace_own
    ) as w:
        strategy = "full-precision"
        if quantization != "none":
            # The adapter was trained under the train stage's settings, not necessarily today's config.
            train_cfg = parse_config(train.config, cfg.source)
            conversations = read_conversations(train.file("validation.jsonl"))[: cfg.merge.compare_prompts]
            w.metrics["merge_comparison"], models = compare_strategies(
                base, trained_dir, cfg, train_cfg, tokenizer, conversations
            )
            strategy = cfg.merge.strategy
            model = models[strategy]
        elif full:
            strategy = "none (full fine-tune)"
            model = _full_precision_base(str(trained_dir), cfg)
        else:
            model = _apply(_full_precision_base(base, cfg), trained_dir)
        gen = model.generation_config or GenerationConfig()
        eos = gen.eos_token_id if gen.eos_token_id is not None else tokenizer.eos_token_id
        eos_ids = list(eos) if isinstance(eos, (list, tuple)) else [eos]
        eot = end_of_turn(tokenizer)
        # Without the end-of-turn token among the EOS ids, HF generate runs past the answer.
        if eot and eot[1] not in eos_ids:
            eos_ids.append(eot[1])
        gen.eos_token_id = eos_ids
        model.generation_config = gen
        model.save_pretrained(w.tmp / "model", safe_serialization=True)
        tokenizer.save_pretrained(w.tmp / "model")
        w.add_artifact("model", "model", formats.HF_SAFETENSORS, dtype=cfg.merge.dtype, strategy=strategy)
        shutil.copy(train.file("validation.jsonl"), w.tmp / "validation.jsonl")
        w.add_artifact("validation-split", "validation.jsonl", formats.JSONL)
        if train.has("pairs-validation"):  # the held-out preference pairs eval scores every model on
            shutil.copy(train.artifact_path("pairs-validation"), w.tmp / PAIRS_VALIDATION)
            w.add_artifact("pairs-validation", PAIRS_VALIDATION, formats.JSONL)
        # Carried forward so that later stages need only this directory: the adapter (the GGUF
        # LoRA export, the dist's lineage), the base it applies to (eval's "before"), the data
        # record and the training metrics.
        if not full:
            shutil.copytree(trained_dir, w.tmp / "adapter")
            w.add_artifact(
                "adapter",
                "adapter",
                formats.PEFT_LORA,
                quantization=quantization,
                dora=bool(train.artifact("adapter").get("dora")),
            )
        w.end_of_turn = eot[0] if eot else None
        w.eos_token_ids = eos_ids
        w.resolved_base = base
        w.dataset = train.dataset
        w.metrics.update(train.metrics)
        stage = w.publish()
    log.info("merged model written to %s", stage.path)
    return stage
