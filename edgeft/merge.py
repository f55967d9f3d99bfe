"""Merge the adapter into the full-precision base: the reference model every export is checked against.

Consumes a `train` stage; produces a `merge` stage: `model/`, an HF model directory
(safetensors, tokenizer, chat template, generation config whose EOS includes the template's
end-of-turn token). The base is always reloaded in full precision, even after QLoRA: merging
into the 4-bit weights would bake their rounding error into every exported file.

    edgeft merge -c examples/nl2sql/edgeft.yaml
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from edgeft.base import end_of_turn, resolve_base
from edgeft.config import Config
from edgeft.errors import ToolError
from edgeft.manifest import Stage, StageWriter, hash_json, read_stage

log = logging.getLogger(__name__)


def inputs_hash(cfg: Config, train: Stage) -> str:
    return hash_json([train.inputs_hash, cfg.section("merge")])


def merge_adapter(cfg: Config, train_dir: Path | None = None, out_dir: Path | None = None,
                  *, force: bool = False) -> Stage:
    """Merge the train stage's adapter into the base; return the published merge stage."""
    train = read_stage(train_dir or cfg.run_dir / "train", "train")
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    out_dir = Path(out_dir) if out_dir else cfg.run_dir / "merge"
    base = train.data.get("resolved_base") or resolve_base(cfg.base_model, cfg.root)
    adapter_dir = train.file(train.artifact("adapter")["path"])
    dtype = getattr(torch, cfg.merge.dtype)
    with StageWriter(out_dir, "merge", config=cfg.to_dict(),
                     inputs_hash=inputs_hash(cfg, train),
                     parent=str(train.path), base_model=cfg.base_model, force=force) as w:
        model = AutoModelForCausalLM.from_pretrained(base, dtype=dtype, use_safetensors=True,
                                                     trust_remote_code=cfg.trust_remote_code)
        try:
            model = PeftModel.from_pretrained(model, adapter_dir).merge_and_unload()
        except (ValueError, RuntimeError, KeyError) as e:
            raise ToolError(f"{adapter_dir}: cannot apply the adapter to {cfg.base_model}: {e}") from e
        tokenizer = AutoTokenizer.from_pretrained(adapter_dir)
        gen = model.generation_config or GenerationConfig()
        eos = gen.eos_token_id if gen.eos_token_id is not None else tokenizer.eos_token_id
        eos_ids = list(eos) if isinstance(eos, (list, tuple)) else [eos]
        eot = end_of_turn(tokenizer)
        # Without the end-of-turn token among the EOS ids, HF generate runs past the answer.
        if eot and eot[1] not in eos_ids:
            eos_ids.append(eot[1])
        gen.eos_token_id = eos_ids
        model.generation_config = gen
        model_dir = w.tmp / "model"
        model.save_pretrained(model_dir, safe_serialization=True)
        tokenizer.save_pretrained(model_dir)
        w.add_artifact("model", "model", "hf-safetensors", dtype=cfg.merge.dtype)
        w.extra["end_of_turn"] = eot[0] if eot else None
        w.extra["eos_token_ids"] = eos_ids
        # Carried forward so later stages need only this directory.
        w.extra["data"] = train.data.get("data")
        shutil.copy(train.file("validation.jsonl"), w.tmp / "validation.jsonl")
        w.add_artifact("validation-split", "validation.jsonl", "jsonl")
        w.metrics.update(train.metrics)
        stage = w.publish()
    log.info("merged model written to %s", stage.path)
    return stage
