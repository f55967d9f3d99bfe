"""The parity gate: does every exported artifact still behave like the model that was trained?

Consumes a `merge` stage (the reference: the merged model in transformers, fp32) and export
stages; produces a `verify` stage with `report.json` and `report.md`. Each artifact is loaded
in the runtime a consumer would use and compared on held-out prompts:

1. token ids of plain text and of the chat-rendered prompt are identical;
2. the artifact's own chat template renders the same prompt; BOS, EOS and the end-of-turn
   token agree;
3. next-token distributions over every position of prompt + reference answer: mean and p99
   KL divergence and top-1 agreement (gated: none grows with the number of positions, unlike the
   maximum, which is reported), max |Δlogit|;
4. greedy generations: identical (lossless types) or a long enough matching prefix
   (quantized types), stopping where the reference stops.

A failing check names the artifact, the check, the probe and the numbers; the report is
written either way, and `VerifyFailed` is raised after it is.

The package, one room each: `probes` (what is asked, and the reference's answers), the check
families `tokens` (1, 2), `distribution` (3), `generation` (4) and `files` (GGUF metadata and
weights, the Java prompt pieces), `checks` (the results of one artifact), `report` (Markdown and
the KL plot) and `run` (the stage). The bands live with the types in edgeft.core.formats.

    edgeft verify -c examples/nl2sql/edgeft.yaml
"""

from edgeft.pipeline.verify.run import inputs_hash, verify_artifacts, verify_path

__all__ = ["inputs_hash", "verify_artifacts", "verify_path"]
