"""Preference tuning after SFT: trl's DPOTrainer on preference pairs (align.pairs), continuing what
the train stage trained.

Consumes a `train` stage and the config's `align` section; produces an `align` stage with the same
contract as `train` (so merge, export and everything after read it alike): `adapter/` (or `model/`
after train.method full), the SFT validation split, the pair splits (`pairs-train.jsonl`,
`pairs-validation.jsonl`: the held-out pairs eval scores every artifact on), `metrics.jsonl` and
`reports/loss.png` (loss, reward accuracy and margin over training).

The reference model is the SFT model itself, as trl documents for PEFT: the train stage's adapter
is loaded trainable, and trl adds a frozen copy of it (adapter "ref") for the reference passes; on
a 4-bit base (QLoRA) both adapters share the one 4-bit base in memory, which is why this, and not a
second model, is the setup trl recommends there. The result is one adapter of the same rank,
which merges, exports to GGUF LoRA and ships like SFT's. After a full fine-tune, the reference is a
second, frozen copy of the SFT model.

The manifest keeps the reward accuracy and margin (on the held-out pairs, before and after) and a
health verdict: accuracy above 0.5 and not falling, margin positive — the ranges practitioners
watch; outside them the build warns and says which.

    edgeft align -c examples/nl2sql/edgeft-dpo.yaml
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from edgeft.core import formats, stages
from edgeft.core.config import Config, parse_config
from edgeft.core.errors import ConfigError, InputError, ToolError, no_space
from edgeft.core.fileio import hash_json
from edgeft.core.manifest import Stage
from edgeft.core.workdir import in_session
from edgeft.data import pairs as pairs_mod
from edgeft.data.rows import file_hash, read_conversations

log = logging.getLogger(__name__)

PAIRS_TRAIN = "pairs-train.jsonl"
PAIRS_VALIDATION = "pairs-validation.jsonl"


def pair_files(cfg: Config) -> list[Path]:
    a = cfg.align
    return [cfg.path(p) for p in (a.pairs, a.validation) if p]


def inputs_hash(cfg: Config, upstream: Sequence[Stage]) -> str:
    """The train stage's inputs, the align section and the pair files (by content)."""
    (train,) = upstream
    files = [file_hash(p) if p.exists() else None for p in pair_files(cfg)]
    return hash_json([train.inputs_hash, cfg.section("align"), files, cfg.data.system_prompt])


def check_pairs(cfg: Config, tokenizer: Any, held_out: list[Any]) -> pairs_mod.PairsReport:
    """The checked and split pairs of the config (errors raise, naming file and line)."""
    a = cfg.align
    for p in pair_files(cfg):
        if not p.exists():
            raise InputError(f"{p}: align pairs file not found")
    report = pairs_mod.analyse(
        cfg.path(a.pairs),
        validation_path=cfg.path(a.validation) if a.validation else None,
        system_prompt=cfg.data.system_prompt,
        val_ratio=a.val_ratio,
        seed=a.seed,
        tokenizer=tokenizer,
        max_length=a.max_length,
        held_out=held_out,
    )
    report.raise_on_errors()
    if report.warnings:
        log.warning(
            "align: %d warning(s), e.g. %s; `edgeft data check` lists them",
            len(report.warnings),
            report.warnings[0],
        )
    return report


def dpo_config(cfg: Config, output_dir: Path) -> Any:
    """trl's DPOConfig from the align section (and train's dtype settings)."""
    from trl import DPOConfig

    from edgeft.pipeline.train import device_args

    a, t = cfg.align, cfg.train
    every = (
        {"eval_strategy": "steps", "eval_steps": a.eval_steps}
        if a.eval_steps > 0
        else {"eval_strategy": "epoch"}
    )
    return DPOConfig(
        output_dir=str(output_dir),
        beta=a.beta,
        loss_type=[a.loss_type],
        learning_rate=a.learning_rate,
        lr_scheduler_type=a.lr_scheduler,
        warmup_ratio=a.warmup_ratio,
        num_train_epochs=a.epochs,
        max_steps=a.max_steps,
        per_device_train_batch_size=a.batch_size,
        per_device_eval_batch_size=a.batch_size,
        gradient_accumulation_steps=a.gradient_accumulation,
        max_length=a.max_length,
        gradient_checkpointing=t.gradient_checkpointing,
        seed=a.seed,
        data_seed=a.seed,
        logging_steps=a.logging_steps,
        **every,
        save_strategy="no",  # minutes, not hours: the last step is the result (no resume; see docs)
        report_to=[],
        **device_args(t),
        dataloader_num_workers=0,
    )


def health(history: list[dict[str, Any]], after: dict[str, Any]) -> dict[str, Any]:
    """The held-out reward accuracy and margin after training against the ranges practitioners watch:
    accuracy above 0.5 (chance) and rising during training, margin positive."""
    acc, margin = after.get("eval_rewards/accuracies"), after.get("eval_rewards/margins")
    trained = [e["rewards/accuracies"] for e in history if "rewards/accuracies" in e]
    problems = []
    if acc is None or margin is None:
        problems.append("no held-out reward accuracy was measured")
    else:
        if acc <= 0.5:
            problems.append(f"held-out reward accuracy {acc:.2f} is not above chance (0.5)")
        if margin <= 0:
            problems.append(f"held-out reward margin {margin:.3g} is not positive")
    # Each logged value is the mean over a few batches of a few pairs: judged by halves, and only
    # when there are enough of them for a trend to be more than one batch's luck.
    if len(trained) >= 4:
        half = len(trained) // 2
        early, late = sum(trained[:half]) / half, sum(trained[-half:]) / half
        if late < early:
            problems.append(f"training reward accuracy fell (first half {early:.2f}, last half {late:.2f})")
    return {
        "accuracy": acc,
        "margin": margin,
        "training_accuracy": [round(x, 4) for x in trained],
        "healthy": not problems,
        "problems": problems,
    }


def plot(history: list[dict[str, Any]], out: Path) -> None:
    """Loss, reward accuracy and margin over the steps (training and held-out)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = (
        ("loss", "DPO loss"),
        ("rewards/accuracies", "reward accuracy"),
        ("rewards/margins", "reward margin"),
    )
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6), dpi=100)
    for ax, (key, title) in zip(axes, panels, strict=True):
        for prefix, label, marker in (("", "training", None), ("eval_", "held-out", "o")):
            points = [(e["step"], e[prefix + key]) for e in history if prefix + key in e and "step" in e]
            if points:
                ax.plot(*zip(*points, strict=True), marker=marker, label=label)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.suptitle("edgeft align (DPO)")
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)


def _models(train: Stage, base: str, cfg: Config) -> tuple[Any, Any]:
    """(the model to train, its frozen reference or None when trl makes one): the SFT adapter loaded
    trainable on the base as train loaded it, or the fully fine-tuned model and a copy of it."""
    from peft import PeftModel

    from edgeft.models.base import load_base

    train_cfg = parse_config(train.config, cfg.source)  # the settings the SFT weights were made with
    if train.has("model"):
        model_dir = str(train.artifact_path("model"))
        return load_base(model_dir, train_cfg), load_base(model_dir, train_cfg).eval()
    model = load_base(base, train_cfg)
    try:
        return PeftModel.from_pretrained(model, train.artifact_path("adapter"), is_trainable=True), None
    except (ValueError, RuntimeError, KeyError) as e:
        raise ToolError(f"{train.artifact_path('adapter')}: cannot load the SFT adapter: {e}") from e


def _fit(trainer: Any) -> tuple[dict, Any, dict]:
    with contextlib.redirect_stdout(sys.stderr):  # the trainer prints; stdout carries edgeft's data
        before = trainer.evaluate(metric_key_prefix="sft")
        try:
            result = trainer.train()
        except (RuntimeError, ValueError) as e:
            if no_space(e):
                raise
            raise ToolError(f"preference tuning failed: {e}") from e
        after = trainer.evaluate()
    return before, result, after


@in_session
def align(
    cfg: Config,
    train_dir: Path | None = None,
    out_dir: Path | None = None,
    *,
    force: bool = False,
    replace_own: bool = False,
) -> Stage:
    """Tune the train stage's weights on the config's preference pairs; return the published stage."""
    if not cfg.aligned:
        raise ConfigError(
            "align.pairs: not set; preference tuning needs a file of {prompt, chosen, rejected} rows"
        )
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError(
            "align: preference tuning runs in one process; run `edgeft align` (or the build) without accelerate launch"
        )
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import DPOTrainer

    from edgeft.pipeline.train import metrics_callback, peak_memory_mb

    train = stages.load(cfg, stages.TRAIN, train_dir)
    out_dir = stages.directory(cfg, stages.ALIGN, out_dir)
    base = train.resolved_base
    if not base:
        raise InputError(f"{train.path}: its manifest does not name the base model: re-run `edgeft train`")
    full = train.has("model")
    weights = "model" if full else "adapter"
    tokenizer = AutoTokenizer.from_pretrained(train.artifact_path(weights))
    held_out = read_conversations(train.file("validation.jsonl"))
    if not held_out:
        raise ConfigError(
            f"align.pairs: the model was trained on plain text rows ({cfg.path(cfg.data.train)}), and preference "
            f"pairs are rendered with its chat template: train on conversations (chat, alpaca or prompt/completion "
            f"rows) to tune preferences after"
        )
    report = check_pairs(cfg, tokenizer, held_out)
    with stages.writer(
        cfg, stages.ALIGN, out_dir, inputs_hash(cfg, [train]), train, force=force, replace_own=replace_own
    ) as w:
        pairs_mod.write_pairs(w.tmp / PAIRS_TRAIN, report.train)
        pairs_mod.write_pairs(w.tmp / PAIRS_VALIDATION, report.validation)
        model, ref = _models(train, base, cfg)
        trainer = DPOTrainer(
            model=model,
            ref_model=ref,
            args=dpo_config(cfg, w.tmp / "checkpoints"),
            train_dataset=Dataset.from_list([p.to_json() for p in report.train]),
            eval_dataset=Dataset.from_list([p.to_json() for p in report.validation]),
            processing_class=tokenizer,
            callbacks=[metrics_callback(w.tmp / "metrics.jsonl")],
        )
        before, result, after = _fit(trainer)
        trained = trainer.model
        if "ref" in getattr(trained, "peft_config", {}):  # trl's frozen copy: the reference, not the result
            trained.delete_adapter("ref")
        trained.save_pretrained(w.tmp / weights, safe_serialization=True)
        tokenizer.save_pretrained(w.tmp / weights)
        shutil.rmtree(w.tmp / "checkpoints", ignore_errors=True)
        shutil.copy(train.file("validation.jsonl"), w.tmp / "validation.jsonl")
        history = trainer.state.log_history
        plot(history, w.tmp / "reports" / "loss.png")
        if full:
            w.add_artifact("model", weights, formats.HF_SAFETENSORS, **_carried(train, "model"))
        else:
            w.add_artifact("adapter", weights, formats.PEFT_LORA, **_carried(train, "adapter"))
        w.add_artifact("validation-split", "validation.jsonl", formats.JSONL)
        w.add_artifact("pairs-train", PAIRS_TRAIN, formats.JSONL, rows=len(report.train))
        w.add_artifact("pairs-validation", PAIRS_VALIDATION, formats.JSONL, rows=len(report.validation))
        w.add_artifact("metrics", "metrics.jsonl", formats.JSONL)
        w.add_artifact("loss-plot", "reports/loss.png", formats.PNG)
        verdict = health(history, after)
        a = cfg.align
        record = {
            "method": a.method,
            "loss_type": a.loss_type,
            "beta": a.beta,
            "learning_rate": a.learning_rate,
            "steps": result.global_step,
            "train_seconds": round(result.metrics.get("train_runtime", 0.0), 2),
            "train_pairs": len(report.train),
            "validation_pairs": len(report.validation),
            "val_loss_before": round(before["sft_loss"], 5),
            "val_loss": round(after["eval_loss"], 5),
            "health": verdict,
            "peak_memory_mb": peak_memory_mb(),
            "reference": "the SFT model (a frozen copy of its weights)",
        }
        # What training recorded stays (the lineage reads it); preference tuning adds its own record.
        w.metrics.update(train.metrics | {"align": record})
        w.extra["pairs"] = report.to_dict()
        w.resolved_base = base
        w.dataset = train.dataset
        stage = w.publish()
    if not verdict["healthy"]:
        log.warning("align: outside the healthy range: %s", "; ".join(verdict["problems"]))
    log.info(
        "preference-tuned weights written to %s (held-out reward accuracy %.2f, margin %.3g)",
        stage.path,
        verdict["accuracy"] or 0.0,
        verdict["margin"] or 0.0,
    )
    return stage


def _carried(train: Stage, name: str) -> dict[str, Any]:
    """The train artifact's own description (method, quantization, DoRA), kept for what reads it."""
    art = train.artifact(name)
    return {k: art.get(k) for k in ("method", "quantization", "dora", "dtype") if art.get(k) is not None}
