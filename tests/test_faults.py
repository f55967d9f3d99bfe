"""The parity gate is itself tested: seed each fault users meet in converted models into a copy of
a correct dist and assert that `edgeft verify` fails for that copy with a message naming the
cause, while the clean dist passes for several seeds (no false alarm).

Content faults are re-signed (the dist's checksums updated to the altered files), so the
behavioural checks, not the checksums, have to catch them; the last two faults are the ones
only the checksums can catch.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import build_micro, resign

from edgeft.cli import cli

pytestmark = pytest.mark.slow

F16 = "gguf/micro-f16.gguf"
Q8 = "gguf/micro-q8_0.gguf"
ONNX = "onnx/onnx-fp32"

LLAMA2_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}[INST] {{ m['content'] }} [/INST]"
    "{% elif m['role'] == 'system' %}<<SYS>>{{ m['content'] }}<</SYS>>{% else %}{{ m['content'] }}"
    "{% endif %}{% endfor %}"
)


def rewrite_gguf(
    path: Path,
    set_keys: dict | None = None,
    remove: tuple[str, ...] = (),
    tensor: tuple[str, Callable[[np.ndarray], None]] | None = None,
) -> None:
    """Rewrite a GGUF in place with changed metadata or one tensor edited (gguf-py's own copier)."""
    import gguf
    from gguf.scripts.gguf_new_metadata import MetadataDetails, copy_with_new_metadata

    reader = gguf.GGUFReader(path, "c")  # copy-on-write: tensor data may be edited in memory
    arch = reader.fields["general.architecture"].contents()
    new = {}
    for key, value in (set_keys or {}).items():
        field = reader.fields[key]
        sub = field.types[-1] if field.types[0] == gguf.GGUFValueType.ARRAY else None
        new[key] = MetadataDetails(field.types[0], value, sub_type=sub)
    if tensor is not None:
        name, edit = tensor
        edit(next(t for t in reader.tensors if t.name == name).data)
    tmp = path.with_suffix(".rewrite")
    copy_with_new_metadata(
        reader, gguf.GGUFWriter(tmp, arch=arch, endianess=reader.endianess), new, list(remove)
    )
    del reader
    tmp.replace(path)


def _template_removed(dist: Path) -> None:
    rewrite_gguf(dist / F16, remove=("tokenizer.chat_template",))
    resign(dist, F16)


def _template_replaced(dist: Path) -> None:
    rewrite_gguf(dist / F16, {"tokenizer.chat_template": LLAMA2_TEMPLATE})
    resign(dist, F16)


def _bos_twice(dist: Path) -> None:
    import gguf

    template = gguf.GGUFReader(dist / F16).fields["tokenizer.chat_template"].contents()
    rewrite_gguf(dist / F16, {"tokenizer.chat_template": "{{ bos_token }}" + template})
    resign(dist, F16)


def _bos_dropped(dist: Path) -> None:
    rewrite_gguf(dist / F16, {"tokenizer.ggml.add_bos_token": False})
    resign(dist, F16)


def _eos_changed(dist: Path) -> None:
    rewrite_gguf(
        dist / F16, {"tokenizer.ggml.eos_token_id": 300}
    )  # an ordinary piece, never generated as a stop
    resign(dist, F16)


def _eot_not_a_stop(dist: Path) -> None:
    path = dist / ONNX / "generation_config.json"
    gen = json.loads(path.read_text())
    gen["eos_token_id"] = 2  # the list lost <|im_end|> (id 4), as when a stale generation_config is shipped
    path.write_text(json.dumps(gen))
    resign(dist, f"{ONNX}/generation_config.json")


def _special_token_lost(dist: Path) -> None:
    import gguf

    types = list(gguf.GGUFReader(dist / F16).fields["tokenizer.ggml.token_type"].contents())
    types[3] = int(gguf.TokenType.NORMAL)  # <|im_start|> no longer a control token
    rewrite_gguf(dist / F16, {"tokenizer.ggml.token_type": types})
    resign(dist, F16)


def _ordinary_token_typed_special(dist: Path) -> None:
    import gguf

    types = list(gguf.GGUFReader(dist / F16).fields["tokenizer.ggml.token_type"].contents())
    types[287] = int(gguf.TokenType.USER_DEFINED)  # "us": llama.cpp now takes it out of "user" whole
    rewrite_gguf(dist / F16, {"tokenizer.ggml.token_type": types})
    resign(dist, F16)


def _merged_into_4bit_base(dist: Path, built: dict, tmp: Path) -> None:
    """The classic QLoRA mistake: base loaded in 4-bit, adapter merged into it, dequantized, exported."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    from edgeft.core.manifest import read_stage
    from edgeft.models.gguf_meta import override
    from edgeft.pipeline.export.gguf import convert_hf

    train = read_stage(built["root"] / "runs" / "micro" / "train", "train")
    base = train.data["resolved_base"]
    model = AutoModelForCausalLM.from_pretrained(
        base,
        dtype=torch.float32,
        quantization_config=BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32
        ),
    )
    model = PeftModel.from_pretrained(model, train.artifact_path("adapter")).merge_and_unload()
    merged = tmp / "merged-into-4bit"
    model.dequantize().save_pretrained(merged)
    reference = built["root"] / "runs" / "micro" / "merge" / "model"
    for f in reference.iterdir():  # the tokenizer and template of the real merge
        if f.suffix != ".safetensors" and f.name != "config.json":
            shutil.copy(f, merged / f.name)
    convert_hf(merged, dist / F16, "micro", outtype="f16", metadata=override("micro", "tiny:micro:0"), eot=4)
    resign(dist, F16)


def _tensor_perturbed(dist: Path) -> None:
    def perturb(data: np.ndarray) -> None:
        rng = np.random.default_rng(0)
        data[...] = (data.astype(np.float32) * (1 + 0.2 * rng.standard_normal(data.shape))).astype(data.dtype)

    rewrite_gguf(dist / F16, tensor=("blk.0.ffn_down.weight", perturb))
    resign(dist, F16)


def _rope_theta_changed(dist: Path) -> None:
    rewrite_gguf(dist / F16, {"llama.rope.freq_base": 20000.0})
    resign(dist, F16)


def _truncated(dist: Path) -> None:
    data = (dist / Q8).read_bytes()
    (dist / Q8).write_bytes(data[: len(data) * 2 // 3])


def _replaced(dist: Path) -> None:
    shutil.copy(dist / F16, dist / Q8)


# fault → (injector, artifact that must fail, check that must fail, words naming the cause)
FAULTS = {
    "chat template removed": (
        _template_removed,
        "gguf-f16",
        "chat_template",
        "has no tokenizer.chat_template",
    ),
    "chat template replaced": (_template_replaced, "gguf-f16", "chat_template", "renders a different prompt"),
    "BOS added twice": (_bos_twice, "gguf-f16", "chat_template", "BOS added twice"),
    "BOS no longer added": (_bos_dropped, "gguf-f16", "tokens_plain", "BOS missing"),
    "EOS changed": (_eos_changed, "gguf-f16", "special_tokens", "EOS changed: 300 vs reference 2 ('</s>')"),
    "end of turn dropped from the stops": (
        _eot_not_a_stop,
        "onnx-fp32",
        "special_tokens",
        "end-of-turn token 4 ('<|im_end|>') is not a stop token",
    ),
    "special token lost": (
        _special_token_lost,
        "gguf-f16",
        "tokens_chat",
        "special token '<|im_start|>' (id 3) is split into ordinary tokens",
    ),
    "ordinary token typed special": (
        _ordinary_token_typed_special,
        "gguf-f16",
        "tokens_plain",
        "llama.cpp reads 'us' in user text as one token (287), typed user-defined",
    ),
    "adapter merged into the 4-bit base": (
        _merged_into_4bit_base,
        "gguf-f16",
        "weights",
        "merged into a 4-bit quantized base",
    ),
    "weight tensor perturbed": (_tensor_perturbed, "gguf-f16", "weights", "worst blk.0.ffn_down.weight"),
    "rope theta changed": (
        _rope_theta_changed,
        "gguf-f16",
        "hyperparameters",
        "llama.rope.freq_base is 20000.0, the reference config's rope_theta is 10000.0",
    ),
    "file truncated": (_truncated, "gguf-q8_0", "checksums", "truncated"),
    "file replaced": (_replaced, "gguf-q8_0", "checksums", "the file was replaced"),
}


def verify(path: Path, out: Path):
    return CliRunner().invoke(cli, ["-q", "verify", str(path), "--out", str(out)])


@pytest.mark.parametrize("fault", list(FAULTS))
def test_verify_names_each_seeded_fault(fault: str, built: dict, tmp_path: Path) -> None:
    inject, artifact, check, cause = FAULTS[fault]
    dist = tmp_path / "dist"
    shutil.copytree(built["dist"], dist)
    if inject is _merged_into_4bit_base:
        inject(dist, built, tmp_path)
    else:
        inject(dist)
    result = verify(dist, tmp_path / "verify")
    assert result.exit_code == 7, result.output
    report = json.loads((tmp_path / "verify" / "report.json").read_text())
    failed = report["artifacts"][artifact]["checks"][check]
    assert not failed["passed"], failed
    assert cause in failed["detail"], failed["detail"]
    assert f"{artifact}: {check}: " in result.stderr and cause in result.stderr
    # Only the altered artifact fails.
    assert [a for a, r in report["artifacts"].items() if not r["passed"]] == [artifact]


def test_clean_dist_passes(built: dict, tmp_path: Path) -> None:
    result = verify(built["dist"], tmp_path / "verify")
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "verify" / "report.json").read_text())
    assert report["passed"] and len(report["probes"]) == 4 + 5  # validation probes + the edge cases
    assert {"hyperparameters", "weights", "edge_kl"} <= set(report["artifacts"]["gguf-f16"]["checks"])


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_no_false_alarm_on_other_seeds(seed: int, tmp_path: Path) -> None:
    """Another tiny model, split and training run: the build (whose verify runs inside) passes."""
    dist = build_micro(tmp_path, seed)["dist"]
    report = json.loads((dist / "verify" / "report.json").read_text())
    assert report["passed"], report["failures"]
