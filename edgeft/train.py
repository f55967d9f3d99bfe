"""Train a LoRA (or QLoRA) adapter with peft + trl's SFTTrainer on the base's chat template.

Consumes the config's `base_model`, `data` and `train` sections; produces a `train` stage
directory: `adapter/` (adapter weights, config, tokenizer with the chat template), the
train/validation splits it used, `metrics.jsonl` (the trainer's log) and, in the manifest,
the base model's and the adapter's validation loss.

    edgeft train -c examples/nl2sql/edgeft.yaml
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
from pathlib import Path
from typing import Any

from edgeft.base import fingerprint, resolve_base
from edgeft.config import Config
from edgeft.data import file_hash, write_jsonl
from edgeft.datacheck import analyse_config, data_files
from edgeft.errors import ConfigError, ToolError
from edgeft.manifest import Stage, StageWriter, hash_json

log = logging.getLogger(__name__)


def inputs_hash(cfg: Config, resolved_base: str) -> str:
    return hash_json({
        "base": fingerprint(cfg.base_model, resolved_base),
        "data": cfg.section("data") | {"files": [file_hash(p) for p in data_files(cfg) if p.exists()]},
        "train": cfg.section("train"),
    })


def _load_model(base: str, quantization: str, trust_remote_code: bool):
    import torch
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    # safetensors only: a pickled checkpoint from a user path could run arbitrary code.
    kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code, "use_safetensors": True}
    if quantization == "nf4":
        # QLoRA: 4-bit NF4 with double quantization; compute in bf16 on GPU, fp32 on CPU.
        compute = torch.bfloat16 if torch.cuda.is_available() else torch.float32
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=compute,
        )
        kwargs["device_map"] = {"": 0} if torch.cuda.is_available() else {"": "cpu"}
    else:
        kwargs["dtype"] = torch.bfloat16 if torch.cuda.is_available() else torch.float32
    model = AutoModelForCausalLM.from_pretrained(base, **kwargs)
    if quantization == "nf4" and not torch.cuda.is_available():
        _keep_4bit_weights_trainable(model)
    return model


def _keep_4bit_weights_trainable(model) -> None:
    """Stop bitsandbytes repacking 4-bit weights for CPU inference during evaluation.

    bitsandbytes 0.50.2, on CPUs with AVX512-BF16, repacks a Linear4bit's weights the first time
    it runs in eval mode without gradients (our base-model evaluation before training) and from
    then on multiplies through `gemv_4bit`, which has no autograd kernel: gradients stop flowing
    through the frozen base layers, silently (torch only warns). Training must keep the
    differentiable path, so the repacking is switched off on every 4-bit layer.
    """
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False


def _describe_weights(model) -> dict[str, Any]:
    """How the base's linear layers are held in memory (proof that QLoRA really ran in 4-bit)."""
    counts: dict[str, int] = {}
    for module in model.modules():
        if type(module).__name__ in ("Linear", "Linear4bit", "Linear8bitLt"):
            counts[type(module).__name__] = counts.get(type(module).__name__, 0) + 1
    return {"dtype": str(next(model.parameters()).dtype).replace("torch.", ""), "layers": counts}


def train_adapter(cfg: Config, out_dir: Path | None = None, *, force: bool = False) -> Stage:
    """Fine-tune a LoRA adapter on the config's data; return the published train stage."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    out_dir = Path(out_dir) if out_dir else cfg.run_dir / "train"
    base = resolve_base(cfg.base_model, cfg.root)
    tokenizer = AutoTokenizer.from_pretrained(base, trust_remote_code=cfg.trust_remote_code)
    if not tokenizer.chat_template:
        raise ConfigError(f"base_model: {cfg.base_model} has no chat template; use a chat/instruct "
                          f"model or one whose tokenizer_config.json defines chat_template")
    report = analyse_config(cfg, tokenizer)
    report.raise_on_errors()
    for f in report.warnings[:10]:
        log.warning("data: %s", f)
    train_rows, val_rows = report.train, report.validation
    data_info = report.to_dict() | {"findings": [f.to_dict() for f in report.warnings]}
    t = cfg.train
    with StageWriter(out_dir, "train", config=cfg.to_dict(), inputs_hash=inputs_hash(cfg, base),
                     base_model=cfg.base_model, force=force) as w:
        write_jsonl(w.tmp / "train.jsonl", train_rows)
        write_jsonl(w.tmp / "validation.jsonl", val_rows)
        train_ds = Dataset.from_list([e.to_json() for e in train_rows])
        val_ds = Dataset.from_list([e.to_json() for e in val_rows])
        model = _load_model(base, t.quantization, cfg.trust_remote_code)
        w.extra["base_loaded_as"] = _describe_weights(model)
        peft_config = LoraConfig(
            r=t.lora_r, lora_alpha=t.lora_alpha, lora_dropout=t.lora_dropout,
            target_modules=t.target_modules, task_type="CAUSAL_LM",
        )
        on_gpu = torch.cuda.is_available()
        args = SFTConfig(
            output_dir=str(w.tmp / "checkpoints"),
            per_device_train_batch_size=t.batch_size,
            per_device_eval_batch_size=t.batch_size,
            gradient_accumulation_steps=t.gradient_accumulation,
            learning_rate=t.learning_rate,
            num_train_epochs=t.epochs,
            max_steps=t.max_steps,
            lr_scheduler_type="cosine",
            warmup_ratio=t.warmup_ratio,
            max_length=t.max_seq_length,
            assistant_only_loss=t.assistant_only_loss,
            seed=t.seed,
            data_seed=t.seed,
            logging_steps=5,
            eval_strategy="no",
            save_strategy="no",
            report_to=[],
            use_cpu=not on_gpu,
            bf16=on_gpu and t.quantization == "none",
            dataloader_num_workers=0,
            pad_to_multiple_of=None,
        )
        trainer = SFTTrainer(model=model, args=args, train_dataset=train_ds, eval_dataset=val_ds,
                             processing_class=tokenizer, peft_config=peft_config)
        # The trainer prints its log lines to stdout, which carries edgeft's data: send to stderr.
        with contextlib.redirect_stdout(sys.stderr):
            # LoRA's B matrices start at zero, so before training the model *is* the base.
            base_eval = trainer.evaluate()
            try:
                result = trainer.train()
            except (RuntimeError, ValueError) as e:
                raise ToolError(f"training failed: {e}") from e
            final_eval = trainer.evaluate()
        adapter_dir = w.tmp / "adapter"
        trainer.model.save_pretrained(adapter_dir, safe_serialization=True)
        tokenizer.save_pretrained(adapter_dir)
        with (w.tmp / "metrics.jsonl").open("w") as f:
            for entry in trainer.state.log_history:
                f.write(json.dumps(entry) + "\n")
        import shutil

        shutil.rmtree(w.tmp / "checkpoints", ignore_errors=True)
        w.add_artifact("adapter", "adapter", "peft-lora", quantization=t.quantization)
        w.add_artifact("train-split", "train.jsonl", "jsonl", rows=len(train_rows))
        w.add_artifact("validation-split", "validation.jsonl", "jsonl", rows=len(val_rows))
        w.metrics.update(
            base_val_loss=round(base_eval["eval_loss"], 5),
            val_loss=round(final_eval["eval_loss"], 5),
            train_loss=round(result.training_loss, 5),
            steps=result.global_step,
            train_seconds=round(result.metrics.get("train_runtime", 0.0), 2),
        )
        w.extra["data"] = data_info
        w.extra["resolved_base"] = base
        stage = w.publish()
    log.info("adapter written to %s (val loss %.4f, base %.4f)", stage.path,
             stage.metrics["val_loss"], stage.metrics["base_val_loss"])
    return stage
