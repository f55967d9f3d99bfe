"""Export the merged model to ONNX with optimum (KV cache), and quantize with ONNX Runtime.

Consumes a `merge` stage; produces an `export-onnx` stage with one folder per type
(`onnx-fp32/`, `onnx-int8/`, `onnx-int4/`), each holding `model.onnx` (+ external data when
large), the tokenizer files and the configs, i.e. what ONNX Runtime Java + a tokenizer library
need. fp32 is optimum's `text-generation-with-past` export; int8 is its MatMul weights in 8-bit blocks
(ONNX Runtime's MatMulNBits, weight-only; value and down projections kept fp32); int4 is
onnxruntime-genai's model builder output (gate/up int4, the other projections int8, with genai_config.json),
which the ORT GenAI APIs, Java included, load as a folder. Input/output names are recorded in
the manifest.

    edgeft export onnx -c examples/nl2sql/edgeft.yaml
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from edgeft.core import formats, stages
from edgeft.core.config import Config
from edgeft.core.errors import ToolError
from edgeft.core.fileio import hash_json
from edgeft.core.manifest import Stage
from edgeft.core.workdir import die_with_parent, in_session
from edgeft.pipeline.export import open_export

log = logging.getLogger(__name__)


def io_names(model_path: Path) -> dict[str, Any]:
    """Input/output names, element types and shapes, as an ONNX Runtime consumer sees them."""
    import onnx

    m = onnx.load(str(model_path), load_external_data=False)

    def desc(values) -> list[dict[str, Any]]:
        out = []
        for v in values:
            t = v.type.tensor_type
            dims = [d.dim_param or d.dim_value for d in t.shape.dim]
            out.append(
                {"name": v.name, "type": onnx.TensorProto.DataType.Name(t.elem_type).lower(), "shape": dims}
            )
        return out

    return {
        "opset": max(o.version for o in m.opset_import if o.domain in ("", "ai.onnx")),
        "inputs": desc(m.graph.input),
        "outputs": desc(m.graph.output),
    }


def _export_fp32(model_dir: Path, out: Path, opset: int) -> None:
    from optimum.exporters.onnx import main_export

    # optimum prints its progress to stdout, which carries edgeft's data: send it to stderr.
    with contextlib.redirect_stdout(sys.stderr):
        try:
            main_export(
                str(model_dir),
                output=str(out),
                task="text-generation-with-past",
                opset=opset,
                device="cpu",
                do_validation=False,
                no_post_process=False,
            )
        except Exception as e:  # optimum raises many kinds; all mean "this export failed"
            raise ToolError(f"optimum ONNX export of {model_dir} failed: {e}") from e


# Protobuf's limit: a model file over 2 GB must keep its weights in an external data file.
EXTERNAL_DATA_BYTES = 2 * 1024**3 - 64 * 1024**2


def _save_variant(model, src_dir: Path, dst_dir: Path) -> None:
    """`model` as dst_dir/model.onnx (external data past protobuf's limit), beside a copy of
    src_dir's other files (tokenizer, configs)."""
    import onnx

    shutil.copytree(src_dir, dst_dir, ignore=shutil.ignore_patterns("model.onnx", "model.onnx_data"))
    large = model.ByteSize() > EXTERNAL_DATA_BYTES
    onnx.save(model, str(dst_dir / "model.onnx"), save_as_external_data=large, location="model.onnx_data")


def _external(src_dir: Path) -> bool:
    return (src_dir / "model.onnx_data").exists() or (
        src_dir / "model.onnx"
    ).stat().st_size > EXTERNAL_DATA_BYTES


# Weight-only int8 (MatMulNBits, 8-bit symmetric blocks of 16) with int8 activations per block in the
# dot products (accuracy level 4, what llama.cpp's q8_0 does too), except the value and down
# projections, which stay fp32 MatMuls: their inputs carry the outliers that int8 activations
# lose (the tensors llama.cpp's k-quant mixes also keep at higher precision). Measured on the
# SmolLM2-135M example's fine-tune, verify's 13 probes (mean KL against fp32, top-1, greedy
# tokens/s on 2 cores with fp32 at 53.3, size; fp32 is 539 MB):
#   ONNX Runtime dynamic int8 (activations quantized per tensor)   1.2     0.61
#   MatMulNBits 8-bit, blocks of 16, fp32 compute (level 1)         2.6e-3  0.995   ~8 tok/s
#   MatMulNBits 8-bit, blocks of 16, int8 compute (level 4)         6.3e-3  0.965  66.7 tok/s  247 MB
#     down_proj at fp32 compute (level 1)                           4.4e-3  0.992  28.7 tok/s  247 MB
#     down_proj kept fp32                                           4.7e-3  0.982  59.8 tok/s  320 MB
#     down_proj and v_proj kept fp32 (this)                         2.4e-3  0.981  61.4 tok/s  330 MB
# (The output matrix is tied to the embedding, a graph input of a Transpose: it is never quantized.)
INT8_BLOCK = 16
INT8_ACCURACY_LEVEL = 4
INT8_FLOAT_MATMULS = ("v_proj", "down_proj")


def _float_matmuls(model) -> list[str]:
    """The MatMul nodes of INT8_FLOAT_MATMULS' projections (optimum names them /…/v_proj/MatMul)."""
    return [
        n.name
        for n in model.graph.node
        if n.op_type == "MatMul" and any(f"/{role}/" in n.name for role in INT8_FLOAT_MATMULS)
    ]


def _quantize_int8(src_dir: Path, dst_dir: Path) -> dict[str, Any]:
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import (
        DefaultWeightOnlyQuantConfig,
        MatMulNBitsQuantizer,
    )

    model = onnx.load(str(src_dir / "model.onnx"))
    keep = _float_matmuls(model)
    config = DefaultWeightOnlyQuantConfig(
        block_size=INT8_BLOCK,
        is_symmetric=True,
        bits=8,
        accuracy_level=INT8_ACCURACY_LEVEL,
        op_types_to_quantize=("MatMul",),
    )
    quantizer = MatMulNBitsQuantizer(
        model,
        bits=8,
        block_size=INT8_BLOCK,
        is_symmetric=True,
        accuracy_level=INT8_ACCURACY_LEVEL,
        nodes_to_exclude=keep,
        algo_config=config,
    )
    quantizer.process()
    model = quantizer.model.model
    _save_variant(model, src_dir, dst_dir)
    quantized = sum(n.op_type == "MatMulNBits" for n in model.graph.node)
    return {
        "recipe": f"MatMulNBits 8-bit, blocks of {INT8_BLOCK}, accuracy level {INT8_ACCURACY_LEVEL}; "
        f"{'/'.join(INT8_FLOAT_MATMULS)} kept fp32",
        "quantized_matmuls": quantized,
        "float_matmuls": len(keep),
    }


def _convert_fp16(src_dir: Path, dst_dir: Path) -> None:
    """fp16 weights and compute with fp32 inputs and outputs (keep_io_types), via ONNX Runtime's
    converter: the same feeds as the fp32 model, and a graph the CPU provider runs."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    _save_variant(
        convert_float_to_float16(onnx.load(str(src_dir / "model.onnx")), keep_io_types=True), src_dir, dst_dir
    )


def inputs_hash(cfg: Config, upstream: Sequence[Stage]) -> str:
    """The merged model's inputs and the ONNX section."""
    (merged,) = upstream
    return hash_json([merged.inputs_hash, cfg.section("export")["onnx"]])


# onnxruntime-genai's builder, k-quant scales in blocks of 16, with every projection but the MLP's
# gate and up at 8 bits (and the output matrix), as edgeft.pipeline.export._genai_build adds to the builder's
# own placement. Measured on the SmolLM2-135M example's fine-tune (mean KL against fp32, top-1, size;
# the GGUF q4_k_m of the same build: 0.148 / 0.899, 105 MB):
#   builder default (RTN int4, blocks of 32)                        1.12  0.61
#   k-quant                                                         0.63  0.69
#   k-quant + its mixed int8 layers (first/last eighth, every 3rd)  0.66  0.70
#   + blocks of 16                                                  0.34  0.79   133 MB
#   + v_proj, down_proj int8 in every layer                         0.17  0.88   146 MB
#   + q/k/v/o_proj, down_proj int8 in every layer (this)            0.16  0.92   151 MB
# Every 576-wide matrix family at 4 bits costs this model 0.03-0.5 nats on its own.
GENAI_INT4_OPTIONS = [
    "algo_config=k_quant",
    "matmul_mixed_precision=last_matmul:int8,mixed_layers:int8",
    "block_size=16",
    "accuracy_level=4",
]
GENAI_INT8_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "down_proj")


def _export_genai_int4(model_dir: Path, folder: Path) -> dict[str, Any]:
    """onnxruntime-genai's model builder: mixed int4/int8 weights (MatMulNBits) for the CPU."""
    import os
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory() as cache:
        cmd = [
            sys.executable,
            "-m",
            "edgeft.pipeline.export._genai_build",
            ",".join(GENAI_INT8_PROJECTIONS),
            "-i",
            str(model_dir),
            "-o",
            str(folder),
            "-p",
            "int4",
            "-e",
            "cpu",
            "-c",
            cache,
            "--extra_options",
            *GENAI_INT4_OPTIONS,
        ]
        proc = subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            env={**os.environ, "HF_HUB_OFFLINE": "1"},
            preexec_fn=die_with_parent,
        )
    if proc.returncode != 0 or not (folder / "genai_config.json").is_file():
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-5:])
        raise ToolError(f"onnxruntime-genai's model builder failed on {model_dir}:\n{tail}")
    return {
        "recipe": f"onnxruntime-genai builder, {' '.join(GENAI_INT4_OPTIONS)}; "
        f"{'/'.join(GENAI_INT8_PROJECTIONS)} int8 in every layer, gate/up int4"
    }


@in_session
def export_onnx(
    cfg: Config,
    merge_dir: Path | None = None,
    out_dir: Path | None = None,
    *,
    force: bool = False,
    replace_own: bool = False,
) -> Stage:
    """Export the merged model to every configured ONNX type."""
    _, model_dir, writer = open_export(
        cfg, stages.EXPORT_ONNX, merge_dir, out_dir, force, inputs_hash, replace_own
    )
    types = list(dict.fromkeys(cfg.export.onnx.types))
    with writer as w:
        fp32 = w.tmp / "onnx-fp32"
        log.info("exporting %s to ONNX (text-generation-with-past)", model_dir)
        _export_fp32(model_dir, fp32, cfg.export.onnx.opset)
        # The tokenizer's template keeps its {% generation %} markers: the HF tokenizers that
        # read these folders understand them.
        for t in types:
            folder = w.tmp / f"onnx-{t}"
            recipe: dict[str, Any] = {}
            if t == "int8":
                log.info(
                    "quantizing ONNX to int8 (weight-only, blocks of %d; %s kept fp32)",
                    INT8_BLOCK,
                    "/".join(INT8_FLOAT_MATMULS),
                )
                recipe = _quantize_int8(fp32, folder)
            if t == "fp16":
                log.info("converting ONNX to fp16")
                _convert_fp16(fp32, folder)
            if t == "int4":
                log.info("building the onnxruntime-genai int4 folder")
                recipe = _export_genai_int4(model_dir, folder)
                w.add_artifact(
                    "onnx-genai-int4",
                    folder.name,
                    formats.ONNX_GENAI,
                    type=t,
                    runtime="onnxruntime-genai",
                    model_file="model.onnx",
                    **recipe,
                    **io_names(folder / "model.onnx"),
                )
                continue
            w.add_artifact(
                f"onnx-{t}",
                folder.name,
                formats.ONNX,
                type=t,
                runtime="onnxruntime",
                model_file="model.onnx",
                **recipe,
                **io_names(folder / "model.onnx"),
            )
        if "fp32" not in types:
            shutil.rmtree(fp32)
        stage = w.publish()
    log.info("ONNX models written to %s", stage.path)
    return stage
