"""Training options a practitioner relies on, each for real on the micro model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import EXAMPLE, without_template, write_config

from edgeft.cli import cli

pytestmark = pytest.mark.slow


def _config(tmp_path: Path, base: str = "tiny:micro", **train) -> Path:
    return write_config(
        tmp_path / "edgeft.yaml",
        name="opt",
        base_model=base,
        workdir=str(tmp_path / "runs"),
        data={"train": str(EXAMPLE / "data" / "nl2sql.jsonl")},
        train={"max_seq_length": 256, "learning_rate": 0.003, **train},
    )


def _train(cfg: Path, *extra: str) -> dict:
    result = CliRunner().invoke(cli, ["-q", "train", "-c", str(cfg), *extra])
    assert result.exit_code == 0, result.output
    return json.loads((Path(result.stdout.strip()) / "edgeft.json").read_text())


def test_base_without_a_template_gets_the_documented_default(tmp_path: Path, micro_model: Path) -> None:
    from transformers import AutoTokenizer

    from edgeft.models.base import DEFAULT_CHAT_TEMPLATE, FAMILY_TEMPLATES, end_of_turn, ensure_chat_template

    # A vocabulary with ChatML's turn tokens (a Qwen base): ChatML, closed by <|im_end|>.
    chatml = AutoTokenizer.from_pretrained(without_template(micro_model, tmp_path / "chatml"))
    assert ensure_chat_template(chatml).startswith("chatml (the base has no chat template")
    assert chatml.chat_template == FAMILY_TEMPLATES["chatml"][1] and end_of_turn(chatml)[0] == "<|im_end|>"
    # None of the families' tokens: edgeft's generic template, closed by the base's own EOS.
    bare = without_template(micro_model, tmp_path / "bare", family_tokens=False)
    manifest = _train(_config(tmp_path, base=str(bare), max_steps=4))
    assert manifest["chat_template"].startswith(
        "edgeft's generic template (the base has no chat template and none"
    )
    assert manifest["metrics"]["chat_template"] == manifest["chat_template"]
    tok = AutoTokenizer.from_pretrained(tmp_path / "runs" / "opt" / "train" / "adapter")
    assert tok.chat_template == DEFAULT_CHAT_TEMPLATE
    assert end_of_turn(tok) == (tok.eos_token, tok.eos_token_id)


def test_early_stopping_stops_when_no_evaluation_improves(
    tmp_path: Path, micro_model: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # With a learning rate of 1e-6, three steps move the LoRA weights by ~1e-6: validation loss
    # cannot fall by the 0.05 nats the threshold asks, on any CPU. So the first evaluation (step 3)
    # is the best, the second (step 6) is no improvement, and patience 1 ends the run there.
    manifest = _train(
        _config(
            tmp_path,
            max_steps=60,
            eval_steps=3,
            learning_rate=1e-6,
            early_stopping_patience=1,
            early_stopping_threshold=0.05,
        )
    )
    m = manifest["metrics"]
    assert m["steps"] == 6 and m["planned_steps"] == 60 and m["stopped_early"] is True
    assert m["val_loss"] == min(m["val_losses"])
    # The base model's evaluation (base_loss) no longer reaches the callback, which called it
    # "early stopping is disabled" although it only skipped that one call.
    assert "early stopping required metric_for_best_model" not in caplog.text


def test_packing_keeps_examples_apart_or_is_refused() -> None:
    import transformers

    from edgeft.core.errors import ConfigError
    from edgeft.pipeline.train import check_packing_keeps_examples_apart

    small = {"num_hidden_layers": 2, "num_attention_heads": 4, "vocab_size": 300}
    llama = transformers.LlamaConfig(hidden_size=64, intermediate_size=128, **small)
    check_packing_keeps_examples_apart(
        transformers.AutoModelForCausalLM.from_config(llama)
    )  # block-diagonal mask
    # OPT takes positions from the attention mask, not the position ids: packed examples would see
    # each other, and edgeft refuses rather than train on that.
    opt = transformers.OPTConfig(hidden_size=64, ffn_dim=128, word_embed_proj_dim=64, **small)
    with pytest.raises(
        ConfigError, match="train.packing: this model's attention .* lets packed examples attend"
    ):
        check_packing_keeps_examples_apart(transformers.AutoModelForCausalLM.from_config(opt))


def test_full_sequence_loss_and_packing(tmp_path: Path, micro_model: Path) -> None:
    manifest = _train(
        _config(tmp_path, max_steps=4, assistant_only_loss=False, packing=True, gradient_checkpointing=True)
    )
    assert manifest["metrics"]["steps"] == 4
    assert manifest["config"]["train"]["packing"] is True


def test_plain_text_data_trains_exports_and_verifies(tmp_path: Path, micro_model: Path) -> None:
    rows = [json.loads(line) for line in (EXAMPLE / "data" / "nl2sql.jsonl").read_text().splitlines()[:120]]
    data = tmp_path / "text.jsonl"
    data.write_text("".join(json.dumps({"text": f"Q: {r['input']}\nA: {r['output']}"}) + "\n" for r in rows))
    cfg = write_config(
        tmp_path / "edgeft.yaml",
        name="text",
        base_model="tiny:micro",
        workdir="runs",
        dist_dir="dist",
        data={"train": str(data)},
        train={"max_steps": 10, "learning_rate": 0.003, "max_seq_length": 128},
        export={"gguf": {"types": ["f16"]}, "onnx": {"types": []}},
        verify={"max_prompts": 3, "max_new_tokens": 16},
    )
    result = CliRunner().invoke(cli, ["build", "-c", str(cfg)])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "dist" / "text" / "verify" / "report.json").read_text())
    checks = report["artifacts"]["gguf-f16"]["checks"]
    assert checks["tokens_plain"]["passed"] and checks["tokens_plain"]["detail"] == "3 probes identical"
    assert report["passed"]
