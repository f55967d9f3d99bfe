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
written either way, and `VerifyFailed` (exit 7) is raised after it is.

    edgeft verify -c examples/nl2sql/edgeft.yaml
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgeft import filecheck
from edgeft.base import end_of_turn
from edgeft.compare import kl_stats, summarise
from edgeft.config import Config
from edgeft.data import read_split
from edgeft.errors import ConfigError, InputError, VerifyFailed, first_line
from edgeft.integrity import checksum_problems, dist_problems
from edgeft.manifest import Stage, StageWriter, check_replaceable, hash_json, read_stage
from edgeft.runtimes import Runtime, load_runtime
from edgeft.workdir import in_session

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Band:
    """What an artifact type may differ by from the fp32 reference, and why."""

    kl_mean: float  # mean KL(reference || artifact) over all positions, nats
    kl_p99: float  # 99th percentile over positions (a maximum grows with the number of positions)
    top1: float  # minimum fraction of positions where the argmax agrees
    gen_prefix: float  # minimum mean fraction of the reference generation reproduced exactly
    why: str
    # Mean KL and top-1 allowed over the edge cases, whose near-context probe (~1000 positions)
    # weighs most: where activations are in reduced precision the error grows with position.
    # None: kl_mean and top1.
    edge_kl_mean: float | None = None
    edge_top1: float | None = None

    @property
    def edge_limit(self) -> float:
        return self.kl_mean if self.edge_kl_mean is None else self.edge_kl_mean

    @property
    def edge_top1_limit(self) -> float:
        return self.top1 if self.edge_top1 is None else self.edge_top1


# Each band: mean KL, p99 KL, top-1 and generation prefix that the type explains, with what was
# measured (verify's own probes; mean KL / top-1) on SmolLM2-135M-Instruct (the nl2sql-smollm2
# example, 2026-11-23), on the tiny example (tiny:small), and llama.cpp's published mean KLD for
# the type (tools/perplexity/README.md of the pinned llama.cpp: Llama-3-8B, Wikitext-2, no
# importance matrix). SmolLM2's hidden width 576 is not a multiple of the K-quants' 256, so
# llama.cpp falls back for 180 of its tensors (q4_k_m → q5_0 6.2 bpw, q5_k_m → q5_1 6.6 bpw,
# q6_k → q8_0): a real 135M model loses far more than an 8B one, and a band must not call the
# type's own error a fault. The statistics gated do not grow with the number of probe positions
# (a maximum does: it is reported, not gated). Behaviour faults (template, tokens, stops,
# weights, hyperparameters) are caught by their own checks, whatever the band.
BANDS: dict[str, Band] = {
    "gguf:f32": Band(1e-4, 2e-3, 0.99, 0.95, "same weights; float summation order only. SmolLM2 3.7e-6 / 1.0; "
                     "tiny 2.4e-7 / 1.0"),
    "gguf:bf16": Band(5e-3, 0.05, 0.97, 0.9, "8-bit mantissa weights. SmolLM2 3.6e-4 / 1.0; tiny 3.0e-5 / 0.997"),
    "gguf:f16": Band(1e-3, 0.01, 0.98, 0.9, "10-bit mantissa weights. SmolLM2 1.6e-5 / 1.0; tiny 6.3e-7 / 1.0; "
                     "llama.cpp 5.5e-4 (its f16 logit storage)"),
    "gguf:q8_0": Band(0.03, 0.3, 0.93, 0.8, "8-bit blocks of 32, int8 activations in the dot products. SmolLM2 "
                      "0.011 / 0.963; tiny 4.2e-4 / 0.982; llama.cpp 1.4e-3 (same top token 97.7%)"),
    "gguf:q6_k": Band(0.1, 1.0, 0.9, 0.7, "6-bit K-quant (q8_0 where the width is not a multiple of 256). "
                      "SmolLM2 0.045 / 0.952; tiny 2.5e-3 / 0.982; llama.cpp 5.5e-3 (96.0%)"),
    "gguf:q5_k_m": Band(1.0, 8.0, 0.7, 0.5, "5-bit K-quant; falls back to q5_1 at width 576, which loses more "
                        "than q4_k_m's q5_0 there. SmolLM2 0.50 / 0.770; tiny 6.7e-3 / 0.963; llama.cpp 0.011"),
    "gguf:q4_k_m": Band(0.4, 3.0, 0.82, 0.5, "4-bit K-quant, 6-bit for sensitive tensors (q5_0 / q8_0 at width "
                        "576). SmolLM2 0.15 / 0.899; tiny 0.026 / 0.884; llama.cpp 0.031 (91.9%)"),
    "gguf:q4_0": Band(2.0, 10.0, 0.5, 0.3, "4-bit blocks of 32, no refinements: a 135M model barely survives it. "
                      "SmolLM2 1.07 / 0.601; tiny 0.030 / 0.861; llama.cpp 0.072"),
    "gguf:q3_k_m": Band(1.0, 8.0, 0.6, 0.3, "3-bit K-quant (q4_0 / q5_0 at width 576). SmolLM2 0.47 / 0.713; "
                        "tiny 0.10 / 0.790; llama.cpp 0.10"),
    "gguf:q2_k": Band(2.5, 15.0, 0.45, 0.2, "2-bit K-quant: only a size option. SmolLM2 1.12 / 0.605; tiny 0.21 / "
                      "0.679; llama.cpp 0.45 (71.1%)"),
    "gguf-lora:f16": Band(2e-3, 0.02, 0.97, 0.9, "f16 base + f16 adapter applied at run time. SmolLM2 1.6e-5 / "
                          "1.0; tiny 8.6e-7 / 1.0"),
    "onnx:fp32": Band(1e-5, 1e-4, 0.999, 1.0, "same fp32 graph; ~1e-5 kernel differences in logits. SmolLM2 "
                      "2.5e-11; tiny 6.9e-13"),
    "onnx:fp16": Band(1e-3, 0.01, 0.98, 0.9, "fp16 weights and activations, fp32 inputs and outputs; the error "
                      "grows with position (tiny:small: mean KL 1e-5 over positions 0-100, 0.015 over 850-950, "
                      "with rotary, norms and softmax kept in fp32 alike). SmolLM2 1.3e-5 / 1.0; tiny 4.7e-6 / 1.0",
                      edge_kl_mean=0.02, edge_top1=0.93),
    "onnx:int8": Band(0.01, 0.1, 0.93, 0.8, "int8 weights in blocks of 16 with int8 activations per block (like "
                      "q8_0), value and down projections kept fp32. SmolLM2 2.5e-3 / 0.982 (all projections int8: "
                      "6.3e-3 / 0.965; ONNX Runtime's dynamic int8: 1.2 / 0.61); tiny 9.1e-5 / 0.999"),
    "onnx-genai:int4": Band(0.4, 3.0, 0.82, 0.5, "k-quant int4 in blocks of 16 for the MLP's gate and up, the "
                            "other projections and the output matrix int8, int8 activations (accuracy level 4): "
                            "about q4_k_m's mix. SmolLM2 0.16 / 0.921 (builder default RTN int4: 1.12 / 0.61); "
                            "tiny 3.0e-3 / 0.947"),
}


@dataclass
class Probe:
    name: str
    messages: list[dict[str, str]] | None  # the prompt (everything before the answer); None for text
    answer: str | None  # the reference answer (for a text probe, the whole text); None: the reference's own reply
    edge: bool = False  # a fixed edge case: its logits are summarised apart from the validation probes

    @property
    def plain_text(self) -> str:
        if self.messages is None:
            return self.answer or ""
        return self.messages[-1]["content"] + (" " + self.answer if self.answer else "")


def probes_from(rows: list[dict[str, Any]], n: int) -> list[Probe]:
    """Held-out probes from a validation split: conversations, or plain-text rows."""
    out = []
    for i, row in enumerate(rows[:n]):
        if "messages" in row:
            out.append(Probe(f"validation[{i}]", row["messages"][:-1], row["messages"][-1]["content"]))
        else:
            out.append(Probe(f"validation[{i}]", None, row["text"]))
    return out


# The fixed edge cases every chat artifact is probed with, each where conversions go wrong.
EDGE_CASES = {
    "edge:unicode": "Zähle die Einträge für „Café Œuvre“ — 日本語のテキスト, ελληνικά, emoji 🚀✓, ½ ≠ ∞.",
    "edge:spaces": "   leading and trailing spaces,  doubled  inside,\ta tab and a newline\n   ",
    "edge:special-text": "What do <|im_end|>, <s> and </s> mean when a user types them? <|im_start|>",
    "edge:empty": "",
}


def edge_probes(validation: list[Probe], prompt_tokens, budget: int) -> list[Probe]:
    """The edge cases as the last user turn of the first validation conversation (its system
    prompt kept), plus a prompt of just under `budget` tokens (the near-context probe).
    `prompt_tokens(messages)` is the length of the rendered chat prompt in tokens."""
    first = next((p for p in validation if p.messages), None)
    if first is None:  # a text dataset: no chat to probe
        return []
    head = first.messages[:-1]

    def asking(text: str) -> list[dict[str, str]]:
        return [*head, {"role": "user", "content": text}]

    probes = [Probe(name, asking(text), None, edge=True) for name, text in EDGE_CASES.items()]
    # Near the context limit: validation questions, one per line, while the prompt fits.
    pool = [p.messages[-1]["content"] for p in validation if p.messages]
    lines: list[str] = []
    step = 1
    while True:  # doubling, then single lines: few renderings even for long contexts
        more = lines + [pool[(len(lines) + k) % len(pool)] for k in range(step)]
        if prompt_tokens(asking("\n".join(more))) <= budget:
            lines, step = more, step * 2
        elif step > 1:
            step = 1
        else:
            break
    if lines:
        n = prompt_tokens(asking("\n".join(lines)))
        probes.append(Probe(f"edge:near-context({n} tokens)", asking("\n".join(lines)), None, edge=True))
    return probes


def _prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


@dataclass
class Reference:
    """What the fp32 reference says for each probe, computed once and reused per artifact."""

    prompts: list[str]
    prompt_ids: list[list[int]]
    full_ids: list[list[int]]
    plain_ids: list[list[int]]
    logits: list[np.ndarray]
    generations: list[tuple[list[int], bool]]
    special: dict[str, Any]
    end_of_turn: int | None


def reference_outputs(ref: Runtime, probes: list[Probe], max_new_tokens: int, eot: int | None) -> Reference:
    """Prompts, generations and logits of the reference for every probe (batched)."""
    prompts, prompt_ids, texts = [], [], []
    for p in probes:
        if p.messages is None:  # plain text: the first half is the prompt, the rest the answer
            full = ref.tokenize(p.answer or "")
            prompts.append("")
            prompt_ids.append(full[: max(1, len(full) // 2)])
            texts.append(full)
        else:
            prompts.append(ref.chat_prompt(p.messages))
            prompt_ids.append(ref.tokenize(prompts[-1], add_special=False))
            texts.append(None)
    gens = ref.generate_many(prompt_ids, max_new_tokens)
    full_ids = []
    for p, ids, gen, text in zip(probes, prompt_ids, gens, texts, strict=True):
        if p.messages is None:
            full_ids.append(text)
            continue
        # The answer, or for an edge case the reference's own reply, then its stop token.
        answer = ref.tokenize(p.answer, add_special=False) if p.answer is not None else gen[0]
        stop = eot if p.answer is not None or gen[1] else None
        full_ids.append(ids + answer + ([stop] if stop is not None else []))
    plain_ids = [ref.tokenize(p.plain_text) for p in probes]
    return Reference(prompts, prompt_ids, full_ids, plain_ids, ref.logits_many(full_ids), gens, ref.special_tokens(),
                     eot)


class Checks:
    """Collects pass/fail results for one artifact."""

    def __init__(self, artifact: str):
        self.artifact = artifact
        self.results: dict[str, dict[str, Any]] = {}
        self.kl_curve: np.ndarray | None = None  # KL at every position of the probe set

    def add(self, check: str, passed: bool, detail: str, **numbers: Any) -> None:
        self.results[check] = {"passed": bool(passed), "detail": detail, **numbers}

    @property
    def failures(self) -> list[str]:
        return [f"{self.artifact}: {name}: {r['detail']}" for name, r in self.results.items() if not r["passed"]]


def diagnose_ids(got: list[int], want: list[int], special: dict[str, Any], tokenizer: bool = True) -> str:
    """What a token-id difference means, when it is one of the known conversion faults
    (`tokenizer=False`: the ids come from different texts, so only BOS faults are meaningful)."""
    bos = special.get("bos")
    if bos is not None and got[:2] == [bos, bos] and want[:2] != [bos, bos]:
        return "BOS added twice"
    # Only where BOS is all that differs: a BOS that is also a chat token (SmolLM2's <|im_start|>)
    # can differ because that token is split, which is said below.
    if bos is not None and want[:1] == [bos] and got[:1] != [bos] and (got == want[1:] or not tokenizer):
        return "BOS missing"
    if bos is not None and got[:1] == [bos] and want[:1] != [bos] and (got[1:] == want or not tokenizer):
        return "BOS added where the reference has none"
    at = _prefix(got, want)
    added = special.get("added", {})
    if tokenizer and at < len(want) and want[at] in added:
        return (f"the special token {added[want[at]]!r} (id {want[at]}) is split into ordinary tokens: it was lost "
                f"from the artifact's vocabulary or lost its special type")
    return ""


# Differences of a runtime's tokenizer that are its own bug, with the smallest reproducer; verify
# names them and does not fail the artifact on them alone (they are in the report).
def _genai_non_decimal_digits(text: str) -> bool:
    return any(ord(c) > 127 and c.isnumeric() for c in text)


KNOWN_DEVIATIONS = {
    "onnxruntime-genai": (
        _genai_non_decimal_digits,
        "onnxruntime-genai 0.15.2's tokenizer does not split non-ASCII numeric characters (½ ² Ⅻ) off as a "
        "Digits pre-tokenizer must: ' ½' is [3351, 138] there, [216, 16738] in transformers and llama.cpp "
        "(SmolLM2); a runtime bug, not the folder's"),
}


def _ids_check(checks: Checks, kind: str, probes: list[Probe], idx, texts: list[str], expected: list[list[int]],
               rt: Runtime, special: dict[str, Any], add_special: bool) -> None:
    bad = [(probes[i].name, rt.tokenize(texts[i], add_special=add_special), expected[i], texts[i]) for i in idx]
    bad = [b for b in bad if b[1] != b[2]]
    known = KNOWN_DEVIATIONS.get(rt.name)
    if bad and known and all(known[0](b[3]) for b in bad):
        checks.add(kind, True, f"{len(idx) - len(bad)}/{len(idx)} probes identical; {', '.join(b[0] for b in bad)}: "
                   f"known deviation: {known[1]}", known_deviation=known[1])
        return
    if bad:
        name, got, want, _ = bad[0]
        at = _prefix(got, want)
        cause = diagnose_ids(got, want, special)
        checks.add(kind, False, (f"{cause}: " if cause else "") + f"{len(bad)}/{len(idx)} probes tokenise "
                   f"differently; first {name} at position {at}: got {got[at:at + 5]}, reference {want[at:at + 5]}")
    else:
        checks.add(kind, True, f"{len(idx)} probes identical")


def _token(special: dict[str, Any], token: int | None) -> str:
    text = special.get("added", {}).get(token)
    return f"{token} ({text!r})" if text is not None else str(token)


def compare(rt: Runtime, ref: Reference, probes: list[Probe], band: Band, checks: Checks,
            max_new_tokens: int) -> dict[str, Any]:
    # 1. token ids, plain and chat-rendered (the reference's rendering, so only the tokenizer varies)
    chat = [i for i, p in enumerate(probes) if p.messages is not None]
    _ids_check(checks, "tokens_plain", probes, range(len(probes)), [p.plain_text for p in probes], ref.plain_ids,
               rt, ref.special, True)
    _ids_check(checks, "tokens_chat", probes, chat, ref.prompts, ref.prompt_ids, rt, ref.special, False)
    # 2. the artifact's own template, and its special tokens
    try:
        rendered = {i: rt.chat_prompt(probes[i].messages) for i in chat}
        diff = [i for i, r in rendered.items() if r != ref.prompts[i]]
        if diff:
            i = diff[0]
            at = _prefix(list(rendered[i]), list(ref.prompts[i]))
            cause = diagnose_ids(rt.tokenize(rendered[i], add_special=False), ref.prompt_ids[i], ref.special, False)
            checks.add("chat_template", False, (f"{cause}: " if cause else "the artifact's chat template renders a "
                       "different prompt: ") + f"{probes[i].name}: rendered prompt differs at char {at}: "
                       f"{rendered[i][at:at + 30]!r} vs reference {ref.prompts[i][at:at + 30]!r}")
        else:
            checks.add("chat_template", True, f"renders the reference prompt ({len(chat)} conversations)")
    except Exception as e:  # a missing or unrenderable template is exactly what this check finds
        checks.add("chat_template", False, f"cannot render the artifact's chat template: {e}")
    special = rt.special_tokens()
    problems = []
    if special["bos"] != ref.special["bos"]:
        problems.append(f"BOS {_token(ref.special, special['bos'])} vs reference {_token(ref.special, ref.special['bos'])}")
    if special["eos"] != ref.special["eos"]:
        problems.append(f"EOS changed: {_token(ref.special, special['eos'])} vs reference "
                        f"{_token(ref.special, ref.special['eos'])}")
    if ref.end_of_turn is not None and ref.end_of_turn not in special["stop"]:
        problems.append(f"end-of-turn token {_token(ref.special, ref.end_of_turn)} is not a stop token "
                        f"(stops: {special['stop']}): generation will run past the end of the answer")
    if ref.special["eos"] is not None and ref.special["eos"] not in special["stop"]:
        problems.append(f"EOS {_token(ref.special, ref.special['eos'])} is not a stop token (stops: {special['stop']})")
    checks.add("special_tokens", not problems, "; ".join(problems) or "BOS, EOS and end-of-turn agree",
               bos=special["bos"], eos=special["eos"], stop=special["stop"])
    # 3. next-token distributions over every position of prompt + answer: the validation probes
    # against the type's band; the edge cases apart (one long probe would outweigh all others).
    per_probe = [kl_stats(ref.logits[i], rt.logits(ref.full_ids[i])) for i in range(len(probes))]
    checks.kl_curve = np.concatenate([s["kl"] for s in per_probe])
    main = [i for i, p in enumerate(probes) if not p.edge]
    edge = [i for i, p in enumerate(probes) if p.edge]
    numbers: dict[str, Any] = summarise([per_probe[i] for i in main])
    top1 = numbers["top1"]
    worst = main[int(np.argmax([per_probe[i]["kl"].max() for i in main]))]
    checks.add("kl_mean", numbers["kl_mean"] <= band.kl_mean,
               f"mean KL {numbers['kl_mean']:.3g} (limit {band.kl_mean:g}) over {numbers['positions']} positions",
               value=numbers["kl_mean"], limit=band.kl_mean)
    checks.add("kl_p99", numbers["kl_p99"] <= band.kl_p99,
               f"p99 KL {numbers['kl_p99']:.3g} (limit {band.kl_p99:g}); max {numbers['kl_max']:.3g} at probe "
               f"{probes[worst].name}", value=numbers["kl_p99"], limit=band.kl_p99)
    checks.add("top1", top1 >= band.top1, f"top-1 agreement {top1:.4f} (minimum {band.top1:g})",
               value=top1, limit=band.top1)
    if edge:
        e = summarise([per_probe[i] for i in edge])
        numbers.update({f"edge_{k}": v for k, v in e.items()})
        worst_edge = edge[int(np.argmax([per_probe[i]["kl"].mean() for i in edge]))]
        # The type's band on the edge cases' own aggregate: mean KL and top-1. A single position
        # deep in the near-context probe is not gated (reduced-precision accumulation), its mean is.
        ok = e["kl_mean"] <= band.edge_limit and e["top1"] >= band.edge_top1_limit
        checks.add("edge_kl", ok,
                   f"edge cases: mean KL {e['kl_mean']:.3g} (limit {band.edge_limit:g}), top-1 {e['top1']:.4f} "
                   f"(minimum {band.edge_top1_limit:g}), max KL {e['kl_max']:.3g}; worst probe {probes[worst_edge].name} "
                   f"(mean KL {per_probe[worst_edge]['kl'].mean():.3g})", value=e["kl_mean"], top1=e["top1"])
    # 4. greedy generations and where they stop
    fractions, stop_mismatch, first_diff = [], [], None
    for i, p in enumerate(probes):
        want, want_stop = ref.generations[i]
        got, got_stop = rt.generate(ref.prompt_ids[i], max_new_tokens)
        n = _prefix(got, want)
        full = n == len(want) == len(got)
        if not p.edge:
            fractions.append(1.0 if full else n / max(len(want), 1))
        if full and got_stop != want_stop:
            stop_mismatch.append(p.name)
        if not full and first_diff is None and not p.edge:
            first_diff = f"{p.name} diverges at token {n} of {len(want)}"
    gen = float(np.mean(fractions))
    numbers["generation_prefix"] = gen
    checks.add("generation", gen >= band.gen_prefix,
               f"mean matching prefix {gen:.3f} of the reference (minimum {band.gen_prefix:g})"
               + (f"; {first_diff}" if first_diff else ""), value=gen, limit=band.gen_prefix)
    checks.add("stops", not stop_mismatch,
               "stops where the reference stops" if not stop_mismatch else
               f"same tokens but a different stop on {', '.join(stop_mismatch)} "
               f"(the runtime does not treat the reference's stop token as end of generation)")
    return numbers


def prompt_format_check(stage: Stage, art: dict[str, Any], ref: Reference, probes: list[Probe],
                        checks: Checks) -> None:
    """The plain prompt pieces shipped for Java (edgeft.prompt_format) render every probe
    conversation exactly as the reference's template does; in a dist, so does the kit's file."""
    from edgeft import prompt_format

    fmt = art.get("prompt_format")
    if fmt is None:
        checks.add("prompt_format", True, f"no plain prompt format ({art.get('prompt_format_note')}): the Java "
                   f"kit falls back to llama.cpp's built-in template matcher, which this check cannot vouch for")
        return
    problems = []
    shipped = stage.path / "java" / "prompt-format.properties"
    if stage.kind == "dist" and shipped.is_file() and prompt_format.from_properties(shipped.read_text()) != fmt:
        problems.append("java/prompt-format.properties differs from the artifact's prompt_format")
    chat = [i for i, p in enumerate(probes) if p.messages is not None]
    for i in chat:
        try:
            got = prompt_format.render(fmt, probes[i].messages)
        except (prompt_format.NoFormat, KeyError) as e:
            problems.append(f"{probes[i].name}: cannot render: {e}")
            break
        if got != ref.prompts[i]:
            at = _prefix(list(got), list(ref.prompts[i]))
            problems.append(f"{probes[i].name}: the plain prompt format differs from the template at char {at}: "
                            f"{got[at:at + 30]!r} vs reference {ref.prompts[i][at:at + 30]!r}")
            break
    checks.add("prompt_format", not problems, "; ".join(problems) or
               f"the Java kit's prompt pieces render the reference prompt ({len(chat)} conversations)")


def file_checks(path: Path, model_dir: Path, gguf_type: str, checks: Checks) -> dict[str, Any]:
    """The GGUF's hyperparameters, and for lossless types its weights, against the reference files."""
    found: dict[str, Any] = {}
    for name, problems, numbers in filecheck.check(path, model_dir, gguf_type):
        if name == "hyperparameters":
            passed = "GGUF hyperparameters match the reference config"
        elif "note" in numbers:  # an architecture gguf-py has no tensor names for: nothing compared
            passed = numbers["note"]
        else:
            passed = (f"{numbers['weights_compared']} tensors equal the reference within {gguf_type} rounding "
                      f"(max relative error {numbers['weights_max_rel_error']:.2g})")
        checks.add(name, not problems, "; ".join(problems) or passed, **numbers)
        found.update(numbers)
    return found


def inputs_hash(cfg: Config, merged: Stage, exports: list[Stage]) -> str:
    """The reference's inputs, the *bytes* of every artifact (a re-export that changed them
    re-verifies), and the verify section."""
    return hash_json([merged.inputs_hash, [e.content_hash() for e in exports], cfg.section("verify")])


def verify_path(path: Path, merge_dir: Path | None = None, out_dir: Path | None = None, *,
                force: bool = False) -> Stage:
    """Verify a dist folder or an export stage on its own: its manifest says how it was made and,
    unless `merge_dir` is given, where the merged reference model is. A dist's own files are
    checked too (`dist_problems`)."""
    from edgeft.config import parse_config

    stage = read_stage(path, ("dist", "export-gguf", "export-onnx"))
    try:
        cfg = parse_config(stage.data.get("config"))
    except ConfigError as e:
        raise InputError(f"{path}: its manifest's config is not valid: {e}") from None
    if merge_dir is None:
        parent = Path(stage.data.get("parent") or "")
        if stage.kind == "dist" and (parent / "edgeft.json").is_file():
            parent = Path(read_stage(parent, "verify").data.get("parent") or "")
        if not (parent / "edgeft.json").is_file():
            raise InputError(f"{path}: its reference model ({parent}) is not here; pass --merge-dir with the "
                             f"merge stage it was exported from")
        merge_dir = parent
    out = Path(out_dir) if out_dir else Path(path).with_name(Path(path).name + "-verify")
    own = dist_problems(stage) if stage.kind == "dist" else []
    return _verify(cfg, read_stage(merge_dir, "merge"), [stage], out, force, own)


@in_session
def verify_artifacts(cfg: Config, merge_dir: Path | None = None, export_dirs: list[Path] | None = None,
                     out_dir: Path | None = None, *, force: bool = False) -> Stage:
    """Compare every artifact of the config's (or the given) export stages with the merged model;
    publish the report (replacing an earlier verify report, nothing else without `force`)."""
    from edgeft.package import export_stages

    merged = read_stage(merge_dir or cfg.run_dir / "merge", "merge")
    return _verify(cfg, merged, export_stages(cfg, export_dirs), Path(out_dir) if out_dir else cfg.run_dir / "verify",
                   force)


def _verify(cfg: Config, merged: Stage, exports: list[Stage], out_dir: Path, force: bool,
            dist_findings: list[str] | None = None) -> Stage:
    from edgeft.runtimes.hf import HFRuntime

    check_replaceable(out_dir, "verify", force=force, replace_own=True)  # before minutes of work
    probes = probes_from(read_split(merged.file("validation.jsonl")), cfg.verify.max_prompts)
    model_dir = merged.file(merged.artifact("model")["path"])
    ref_rt = HFRuntime(model_dir)
    eot = end_of_turn(ref_rt.tokenizer)
    context = int(getattr(ref_rt.model.config, "max_position_embeddings", 0) or cfg.verify.context_tokens)
    n_ctx = min(context, cfg.verify.context_tokens)
    if cfg.verify.edge_cases:
        tok = ref_rt.tokenizer
        probes += edge_probes(probes, lambda m: len(tok.apply_chat_template(m, add_generation_prompt=True)),
                              n_ctx - cfg.verify.max_new_tokens - 8)
    log.info("reference: transformers fp32 on %d probes", len(probes))
    ref = reference_outputs(ref_rt, probes, cfg.verify.max_new_tokens, eot[1] if eot else None)
    del ref_rt
    report: dict[str, Any] = {"reference": str(merged.path), "probes": [p.name for p in probes], "artifacts": {}}
    failures: list[str] = [f"dist: files: {p}" for p in dist_findings or []]
    curves: dict[str, np.ndarray] = {}
    for stage in exports:
        for art in stage.artifacts:
            entry, checks = verify_artifact(stage, art, ref, probes, model_dir, n_ctx, cfg.verify.max_new_tokens)
            if checks.kl_curve is not None:
                curves[art["name"]] = checks.kl_curve
            report["artifacts"][art["name"]] = entry
            failures += checks.failures
    if dist_findings is not None:
        report["dist_files"] = {"passed": not dist_findings, "problems": dist_findings}
    report["passed"] = not failures
    report["failures"] = failures
    with StageWriter(out_dir, "verify", config=cfg.to_dict(), inputs_hash=inputs_hash(cfg, merged, exports),
                     parent=str(merged.path), base_model=cfg.base_model, force=force, replace_own=True) as w:
        (w.tmp / "report.json").write_text(json.dumps(report, indent=2) + "\n")
        (w.tmp / "report.md").write_text(markdown_report(report))
        w.add_artifact("report", "report.json", "json")
        w.add_artifact("report-md", "report.md", "markdown")
        if curves:
            plot_kl(curves, [len(ids) for ids in ref.full_ids], [p.name for p in probes], w.tmp / "kl.png")
            w.add_artifact("kl-plot", "kl.png", "png")
        w.metrics.update(passed=report["passed"], failures=len(failures))
        stage = w.publish()
    if failures:
        raise VerifyFailed(f"verification failed ({len(failures)} check(s)); report: {stage.file('report.md')}\n"
                           + "\n".join(failures))
    return stage


def verify_artifact(stage: Stage, art: dict[str, Any], ref: Reference, probes: list[Probe], model_dir: Path,
                    n_ctx: int, max_new_tokens: int) -> tuple[dict[str, Any], Checks]:
    """Every check of one artifact. A file that passes its checksum but cannot be read (a GGUF
    header with an absurd count, a corrupt model.onnx) fails this artifact alone, naming why."""
    name = str(art.get("name"))
    checks = Checks(name)
    key = f"{art.get('format')}:{art.get('type')}"
    band = BANDS.get(key)
    numbers: dict[str, Any] = {}
    bad_files = checksum_problems(stage, art)
    checks.add("checksums", not bad_files, "; ".join(bad_files) or "files match the manifest")
    if band is None:
        checks.add("type", False, f"no band for artifact type {key!r}: not an artifact edgeft exports")
    elif not bad_files:
        runtime = art.get("runtime", "its runtime")
        # The artifact is what failed, whatever its reader or runtime raised: report it, go on
        # with the others (the traceback is in the -v log).
        try:
            if art["format"] == "gguf":
                numbers.update(file_checks(stage.file(art["path"]), model_dir, art["type"], checks))
            rt = load_runtime(art, stage.path, n_ctx=n_ctx)
        except Exception as e:
            log.debug("%s could not be read", name, exc_info=True)
            checks.add("readable", False, f"{runtime} cannot read it: {type(e).__name__}: {first_line(e)}")
        else:
            log.info("verifying %s in %s", name, runtime)
            try:
                with rt:
                    numbers.update(compare(rt, ref, probes, band, checks, max_new_tokens))
                if "prompt_format" in art:
                    prompt_format_check(stage, art, ref, probes, checks)
            except Exception as e:
                log.debug("%s failed while running", name, exc_info=True)
                checks.add("runs", False, f"{runtime} loaded it but failed running it: {type(e).__name__}: "
                           f"{first_line(e)}")
    recorded = {k: art[k] for k in ("sha256", "files") if k in art}
    entry = {"file": str(art.get("path")), "type": key, "runtime": art.get("runtime"),
             "band": band.__dict__ if band else None, "numbers": numbers, "checks": checks.results,
             "passed": not checks.failures, **recorded}
    return entry, checks


def markdown_report(report: dict[str, Any]) -> str:
    lines = ["# edgeft verify report", "",
             f"Reference: `{report['reference']}` (transformers, fp32); {len(report['probes'])} probes.", "",
             "| artifact | runtime | KL mean | KL p99 | KL max | top-1 | max Δlogit | gen prefix | result |",
             "|---|---|---|---|---|---|---|---|---|"]
    keys = ("kl_mean", "kl_p99", "kl_max", "top1", "max_dlogit", "generation_prefix")
    for name, a in report["artifacts"].items():
        cells = " | ".join(f"{a['numbers'][k]:.3g}" if k in a["numbers"] else "–" for k in keys)
        lines.append(f"| {name} | {a['runtime']} | {cells} | {'pass' if a['passed'] else 'FAIL'} |")
    lines += ["", "**Passed.**" if report["passed"] else "**Failed:**", ""]
    lines += [f"- {f}" for f in report["failures"]]
    return "\n".join(lines) + "\n"


def plot_kl(curves: dict[str, np.ndarray], lengths: list[int], names: list[str], out: Path) -> None:
    """KL divergence at every probe position, one line per artifact (log scale), probes marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(11, 4.5), dpi=100)
    floor = 1e-12  # lossless artifacts sit at float noise; keep them on a log axis
    for name, kl in curves.items():
        ax.plot(np.maximum(kl, floor), linewidth=0.8, label=name)
    edge = 0
    for n in lengths:
        edge += n
        ax.axvline(edge, color="grey", linewidth=0.4, alpha=0.6)
    ax.set_yscale("log")
    ax.set_xlabel(f"position over {len(names)} probes (grey lines: probe boundaries)")
    ax.set_ylabel("KL(reference || artifact), nats")
    ax.set_title("edgeft verify: next-token KL divergence per position")
    ax.legend(fontsize=7, ncol=2, loc="upper left")
    ax.grid(alpha=0.2)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)

