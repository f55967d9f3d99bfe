"""Run onnxruntime-genai's model builder with more MatMuls kept at 8 bits than its presets name.

    python -m edgeft.pipeline.export._genai_build ROLES <onnxruntime_genai.models.builder arguments…>

ROLES (or "-"): comma-separated projection names (q_proj, k_proj, v_proj, o_proj, gate_proj,
up_proj, down_proj) quantized to 8 bits in every layer. The builder's own placement
(`matmul_mixed_precision`: the output matrix and its llama.cpp-style "mixed layers") is kept and
these are added to it, through the same per-node table (`int4_customized_weight_config`) its
presets fill, so the quantizer, k-quant scales and file layout are the builder's own.
"""

from __future__ import annotations

import runpy
import sys

_PARENT = {
    "q_proj": "attn",
    "k_proj": "attn",
    "v_proj": "attn",
    "o_proj": "attn",
    "qkv_proj": "attn",
    "gate_proj": "mlp",
    "up_proj": "mlp",
    "down_proj": "mlp",
}


def main() -> None:
    roles, *args = sys.argv[1:]
    from pathlib import Path

    import onnxruntime_genai.models as package  # puts its folder on sys.path: the builder imports `builders`

    script = str(Path(package.__file__).parent / "builder.py")

    if roles != "-":
        names = [r.strip() for r in roles.split(",") if r.strip()]
        unknown = [r for r in names if r not in _PARENT]
        if unknown:
            raise SystemExit(f"unknown projection(s) {unknown}: choose from {sorted(_PARENT)}")
        import builders.base as base

        original = base.Model.make_matmul_mixed_precision

        def with_roles(self, placement):
            original(self, placement)
            table = dict(self.int4_customized_weight_config or {})
            for i in range(self.num_layers):
                for role in names:
                    table[f"/model/layers.{i}/{_PARENT[role]}/{role}/MatMul"] = {"bits": 8}
                    if role in ("q_proj", "k_proj", "v_proj"):  # fused when the builder packs q, k, v
                        table[f"/model/layers.{i}/attn/qkv_proj/MatMul"] = {"bits": 8}
            self.int4_customized_weight_config = table

        base.Model.make_matmul_mixed_precision = with_roles
    sys.argv = [script, *args]
    runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    main()
