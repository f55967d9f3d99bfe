"""Task evaluation: "always measure before and after", on the held-out split, for every artifact.

Consumes the merge stage (the fine-tuned model, its validation split, and the base it was
trained from) and the export stages; produces an `eval` stage with
`results.json` and `results.md`. Each model answers every held-out prompt greedily in its own
runtime (the artifact's template, tokenizer and stop tokens, as a consumer gets them):

- the base model (transformers, with the fine-tune's chat template and stop tokens, so that
  before and after differ only in the weights);
- the fine-tuned model (the merged model in transformers: the reference);
- every exported artifact (llama.cpp, ONNX Runtime, ORT GenAI).

Metrics: exact match after whitespace normalisation, chrF (sacrebleu), and format compliance
when the config asks for one (JSON that parses, a JSON schema, or a regex). Regression gate, a
paired decision on the same examples (edgeft.judge.paired): an artifact fails on a metric when it
loses at least `eval.min_discordant` examples the fine-tuned model got right, the loss is
significant at `eval.alpha` and it keeps less than `eval.min_relative` of the score, naming the
artifact, metric and p-value (`EvalFailed`, exit 8, after the results are written). The same
test says whether the fine-tuned model beats the base.
Optional general-capability prompts are answered by base and fine-tuned model, and a drop
beyond `eval.forgetting_tolerance` is flagged as catastrophic forgetting.

    edgeft eval -c examples/nl2sql/edgeft.yaml
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeft.core import stages
from edgeft.core.config import Config
from edgeft.core.errors import EvalFailed, InputError, describe
from edgeft.core.fileio import hash_json
from edgeft.core.manifest import Stage
from edgeft.core.workdir import in_session
from edgeft.data.rows import file_hash, read_split
from edgeft.judge import paired
from edgeft.judge.gate import Gate, load_or_why
from edgeft.judge.paired import Comparison
from edgeft.pipeline.evaluate.results import (
    METRIC_NAMES,
    METRICS,
    OPTIONAL_BINARY,
    EvalResults,
    ModelResult,
    PerExample,
    PreferenceResults,
    Rule,
    compare_outcomes,
)
from edgeft.runtimes import Runtime

log = logging.getLogger(__name__)


def squash_whitespace(text: str) -> str:
    """Whitespace-insensitive form used by exact match: runs of whitespace → one space, trimmed."""
    return " ".join(text.split())


def format_checker(cfg: Config) -> tuple[Callable[[str], bool] | None, str | None]:
    """(a check of one output, its description) from eval.json / eval.json_schema / eval.regex."""
    e = cfg.eval
    if e.regex:
        pattern = re.compile(e.regex, re.DOTALL)
        return (lambda text: pattern.fullmatch(text.strip()) is not None), f"matches /{e.regex}/"
    if e.json_schema:
        import jsonschema

        path = cfg.path(e.json_schema)
        import referencing.exceptions

        from edgeft.data.tools import validator as local_validator

        try:
            schema = json.loads(path.read_text())
            jsonschema.Draft202012Validator.check_schema(schema)
            checker = local_validator(schema)  # never fetches a remote $ref
        except (OSError, json.JSONDecodeError, jsonschema.SchemaError) as err:
            raise InputError(f"{path}: eval.json_schema is not a readable JSON schema: {err}") from None

        def valid(text: str) -> bool:
            try:
                return checker.is_valid(json.loads(text))
            except json.JSONDecodeError:
                return False
            except referencing.exceptions.Unresolvable as err:
                raise InputError(
                    f"{path}: eval.json_schema has a $ref edgeft cannot resolve ({err}); use references "
                    f"inside the schema (#/$defs/...)"
                ) from None

        return valid, f"JSON valid against {path.name}"
    if e.json:

        def parses(text: str) -> bool:
            try:
                json.loads(text)
                return True
            except json.JSONDecodeError:
                return False

        return parses, "JSON that parses"
    return None, None


@dataclass(frozen=True)
class Checks:
    """The binary checks beyond exact match: format compliance (eval.json and its kin), and, for a
    model trained on tool rows, tool-call accuracy with each example's tools (edgeft.data.tools)."""

    format: Callable[[str], bool] | None = None
    tools: list[dict[str, Any] | None] | None = None  # per example, its tools by name (None: none)


def score(outputs: list[str], references: list[str], checks: Checks) -> dict[str, float]:
    """Exact match, chrF (0-100, sacrebleu's corpus-level chrF), format compliance and tool-call
    accuracy (where `checks` has them)."""
    from sacrebleu.metrics import CHRF

    n = max(len(outputs), 1)
    binary = right(outputs, references, checks)
    out = {
        "exact_match": sum(binary["exact_match"]) / n,
        "chrf": CHRF().corpus_score(outputs, [references]).score,
    }
    for m in OPTIONAL_BINARY:
        if m in binary:
            out[m] = sum(binary[m]) / n
    return out


def right(outputs: list[str], references: list[str], checks: Checks) -> dict[str, list[bool]]:
    """Per example, whether each binary metric holds: exact match, format compliance, and tool-call
    accuracy (the reference's calls, or none, each valid against its tool: edgeft.data.tools.agrees)."""
    out = {
        "exact_match": [
            squash_whitespace(o) == squash_whitespace(r) for o, r in zip(outputs, references, strict=True)
        ]
    }
    if checks.format is not None:
        out["format"] = [checks.format(o) for o in outputs]
    if checks.tools is not None:
        from edgeft.data.tools import agrees

        out["tool_call"] = [
            agrees(o, r, t) for o, r, t in zip(outputs, references, checks.tools, strict=True)
        ]
    return out


def versus_base(
    fine_tuned: list[str],
    base: list[str],
    references: list[str],
    checks: Checks,
    rule: Rule,
) -> dict[str, dict[str, Any]]:
    """Does the fine-tuned model beat the base? Per metric, the paired test with the base as the
    candidate that may be worse: `better` when the fine-tuned model scores higher at p < alpha."""
    out = {}
    for m, c in compare_answers(fine_tuned, base, references, checks, rule).items():
        out[m] = {
            "p": c.p,
            "better": bool(c.p < rule.alpha and c.candidate < c.reference),
            "difference": c.reference - c.candidate,
            "ci": [-c.ci[1], -c.ci[0]],
        }
        if c.losses is not None:
            out[m] |= {"fine_tuned_only": c.losses, "base_only": c.wins}
    return out


def example_id(prompt: list[dict[str, str]] | str, reference: str) -> str:
    """An example's identity across evaluations (the registry pairs two versions' answers by it)."""
    return hash_json([prompt, reference])[:16]


def compare_answers(
    reference: list[str],
    candidate: list[str],
    references: list[str],
    checks: Checks,
    rule: Rule,
) -> dict[str, Comparison]:
    """The paired comparison (results.compare_outcomes) of two models' answers to the same
    examples, per metric, under the gate's rule (eval's config or results)."""
    return compare_outcomes(
        right(reference, references, checks),
        right(candidate, references, checks),
        reference,
        candidate,
        references,
        rule,
    )


# The models in transformers that are measured but not judged: the base, the SFT model a
# preference-tuned one started from, and the fine-tuned model every artifact is judged against.
REFERENCE_MODELS = ("base", "sft", "fine-tuned")

Prompt = list[dict[str, str]] | str  # a conversation, or the first half of a plain text


def _prompt_ids(rt: Runtime, prompt: Prompt, max_new_tokens: int, what: str) -> list[int]:
    """A prompt's ids, refused (naming the example) where it does not fit the context with
    eval.max_new_tokens more, as `edgeft run` refuses it."""
    try:
        if not isinstance(prompt, str):
            return rt.prompt_ids(prompt, max_new_tokens)
        ids = rt.tokenize(prompt)
        rt.check_fits(len(ids), max_new_tokens)
        return ids
    except InputError as e:
        raise InputError(f"{what}: {e}") from None


def answer(
    rt: Runtime,
    prompts: Sequence[Prompt],
    max_new_tokens: int,
    label: str,
    speed: dict[str, Any] | None = None,
) -> list[str]:
    """Greedy replies from the runtime's own template, tokenizer and stop tokens (plain-text
    prompts: the continuation of the text, BOS added as the tokenizer says). Batched where the
    runtime batches (transformers), in chunks so that progress shows on long runs.

    `speed`: filled with the CPU speed of a runtime that answers one prompt at a time (the edge
    runtimes): generation tokens/s over every reply (the time after each first token), and prompt
    tokens/s of one PROMPT_PROBE-token prompt no earlier prompt shares a prefix with."""
    ids = [
        _prompt_ids(rt, p, max_new_tokens, f"{label}: eval example {k + 1}") for k, p in enumerate(prompts)
    ]
    outputs: list[str] = []
    started = shown = time.time()
    one_at_a_time = speed is not None and type(rt).generate_many is Runtime.generate_many
    decoded, decode_s = 0, 0.0
    chunk = 16
    for at in range(0, len(ids), chunk):
        if one_at_a_time:
            for prompt in ids[at : at + chunk]:
                tokens, first = [], 0.0
                for tok in rt.stream(prompt, max_new_tokens):
                    tokens.append(tok)
                    if len(tokens) == 1:
                        first = time.perf_counter()
                if len(tokens) > 1:
                    decoded, decode_s = decoded + len(tokens) - 1, decode_s + time.perf_counter() - first
                outputs.append(rt.detokenize(tokens).strip())
        else:
            outputs += [
                rt.detokenize(tokens).strip()
                for tokens, _ in rt.generate_many(ids[at : at + chunk], max_new_tokens)
            ]
        if time.time() - shown > 15 and len(outputs) < len(prompts):  # progress on long runs only
            log.info("%s: %d/%d answered", label, len(outputs), len(prompts))
            shown = time.time()
    log.info("%s: %d prompts answered in %.1f s", label, len(prompts), time.time() - started)
    if one_at_a_time:
        assert speed is not None
        speed.update(
            prompt_tokens_per_s=_prompt_speed(rt, ids),
            generation_tokens_per_s=round(decoded / decode_s, 1) if decode_s > 0 else None,
            generated_tokens=decoded,
        )
    return outputs


PROMPT_PROBE = 256


def _prompt_speed(rt: Runtime, ids: list[list[int]]) -> float | None:
    """Prompt tokens/s: the held-out prompts' tokens, reversed (so no cached prefix is reused),
    PROMPT_PROBE of them, processed up to the first new token."""
    pool = [t for p in ids for t in p][::-1][:PROMPT_PROBE]
    if len(pool) < 16:
        return None
    t0 = time.perf_counter()
    next(iter(rt.stream(pool, 1)), None)
    return round(len(pool) / (time.perf_counter() - t0), 1)


def _examples(rows: list[dict[str, Any]], limit: int) -> tuple[list[Prompt], list[str]]:
    """(prompts, reference answers): a conversation's last turn is the answer; a plain text is
    cut at the space nearest its middle, the second half being the continuation to produce."""
    prompts: list[Prompt] = []
    references = []
    for r in rows[:limit]:
        if "messages" in r:
            prompts.append(r["messages"][:-1])
            references.append(r["messages"][-1]["content"])
        elif r.get("text", "").strip():
            text = r["text"].strip()
            spaces = [i for i, c in enumerate(text) if c.isspace()] or [len(text) // 2]
            cut = min(spaces, key=lambda i: abs(i - len(text) // 2))
            prompts.append(text[:cut])
            references.append(text[cut:].strip())
    return prompts, references


def _example_tools(rows: list[dict[str, Any]], n: int) -> list[dict[str, Any] | None] | None:
    """Each held-out example's tools by name (the first `n` conversations, as `_examples` takes
    them), or None when no example has tools: tool-call accuracy is then not measured."""
    convs = [r for r in rows if "messages" in r][:n]
    if not any(r.get("tools") for r in convs):
        return None
    from edgeft.data.tools import specs

    return [specs(r["tools"]) if r.get("tools") else None for r in convs]


def _general_prompts(cfg: Config) -> tuple[list[list[dict[str, str]]], list[str]] | None:
    """eval.general_prompts: the user's general-capability examples (any format `data` reads)."""
    if not cfg.eval.general_prompts:
        return None
    from edgeft.data.rows import load_examples, placeholders, raise_listing

    path = cfg.path(cfg.eval.general_prompts)
    if not path.exists():
        raise InputError(f"{path}: eval.general_prompts not found")
    # A system prompt filled from each training row's fields has nothing to fill it from here.
    system = (
        cfg.data.system_prompt
        if cfg.data.system_prompt and not placeholders(cfg.data.system_prompt)
        else None
    )
    report = load_examples(path, cfg.data.columns or None, system)
    if report.problems:
        raise_listing(
            f"{path}: {len(report.problems)} malformed row(s) in eval.general_prompts", report.problems
        )
    chats = [e.messages for e in report.examples if e.messages]
    if not chats:
        raise InputError(f"{path}: eval.general_prompts has no conversations (prompt + answer rows)")
    return [m[:-1] for m in chats], [m[-1]["content"] for m in chats]


def _base_runtime(base_dir: str, reference: Any) -> Runtime:
    """The base model in transformers, prompted and stopped exactly like the fine-tuned model."""
    from edgeft.runtimes.hf import HFRuntime

    ref = reference.special_tokens()
    return HFRuntime(base_dir, chat_template=reference.tokenizer.chat_template, extra_stop=ref["stop"])


def _sft_runtime(merged: Stage, reference: Any) -> Runtime | None:
    """After preference tuning: the SFT model it started from (the train stage's weights), in
    transformers, prompted and stopped like the fine-tuned model; None where that stage is gone."""
    from edgeft.runtimes.hf import HFRuntime

    if not merged.has("pairs-validation"):
        return None
    try:
        train = merged.ancestor(stages.TRAIN)
    except InputError as e:
        log.warning("the SFT model is not evaluated: %s", e)
        return None
    ref = reference.special_tokens()
    template = reference.tokenizer.chat_template
    if train.has("model"):
        return HFRuntime(train.artifact_path("model"), chat_template=template, extra_stop=ref["stop"])
    from peft import PeftModel

    rt = HFRuntime(str(merged.resolved_base), chat_template=template, extra_stop=ref["stop"])
    rt.model = PeftModel.from_pretrained(rt.model, train.artifact_path("adapter")).merge_and_unload().eval()
    return rt


def inputs_hash(cfg: Config, upstream: Sequence[Stage]) -> str:
    """The fine-tuned model's inputs, the *bytes* of every artifact, the eval section and the
    general prompts file. `upstream`: the merge stage, then the export stages."""
    merged, *exports = upstream
    general = cfg.path(cfg.eval.general_prompts) if cfg.eval.general_prompts else None
    return hash_json(
        [
            merged.inputs_hash,
            [e.content_hash() for e in exports],
            cfg.section("eval"),
            file_hash(general) if general and general.is_file() else None,
        ]
    )


@dataclass
class _Answers:
    """Every model's greedy answers to the held-out prompts (and the general prompts, for base and
    fine-tuned), the runtime each ran in, their speed, and why an artifact could not run."""

    outputs: dict[str, list[str]] = field(default_factory=dict)
    general: dict[str, list[str]] = field(default_factory=dict)
    runtimes: dict[str, str] = field(
        default_factory=lambda: {"base": "transformers", "fine-tuned": "transformers"}
    )
    speeds: dict[str, dict[str, Any]] = field(default_factory=dict)
    unreadable: dict[str, str] = field(default_factory=dict)
    # After preference tuning: each model's (prefers chosen, margin) per held-out pair.
    preference: dict[str, tuple[list[bool], list[float]]] = field(default_factory=dict)


def _answer_all(
    gate: Gate,
    prompts: Sequence[Prompt],
    general: Sequence[Prompt] | None,
    n_new: int,
    pairs: PairSequences | None = None,
) -> _Answers:
    """Every model's answers; with `pairs`, the models in transformers score them too while loaded
    (the artifacts score them in `_preference`, loaded with every position's logits)."""
    from edgeft.pipeline.evaluate import preference
    from edgeft.runtimes.hf import HFRuntime

    got = _Answers()
    reference = HFRuntime(gate.reference_dir)
    got.outputs["fine-tuned"] = answer(reference, prompts, n_new, "fine-tuned (transformers)")
    if general:
        got.general["fine-tuned"] = answer(reference, general, n_new, "fine-tuned, general")
    if pairs is not None:
        got.preference["fine-tuned"] = preference.score(reference, pairs, "fine-tuned")
    sft = _sft_runtime(gate.merged, reference)
    if sft is not None:
        got.runtimes["sft"] = "transformers"
        got.outputs["sft"] = answer(sft, prompts, n_new, "sft (transformers)")
        if pairs is not None:
            got.preference["sft"] = preference.score(sft, pairs, "sft")
        del sft
    base = _base_runtime(str(gate.merged.resolved_base), reference)
    del reference
    got.outputs["base"] = answer(base, prompts, n_new, "base (transformers)")
    if general:
        got.general["base"] = answer(base, general, n_new, "base, general")
    if pairs is not None:
        got.preference["base"] = preference.score(base, pairs, "base")
    del base
    for stage, art in gate.artifacts():
        got.runtimes[art.name] = art.runtime or art.format
        rt, why = load_or_why(stage, art, all_logits=False)
        if rt is not None:
            try:
                with rt:
                    got.outputs[art.name] = answer(
                        rt, prompts, n_new, f"{art.name} ({art.runtime})", got.speeds.setdefault(art.name, {})
                    )
            except Exception as e:  # the artifact failed, not the evaluation: it scores nothing, named
                log.debug("%s could not be evaluated", art.name, exc_info=True)
                why = describe(e)
        if why is not None:
            got.unreadable[art.name] = why
            got.outputs[art.name] = [""] * len(prompts)
    return got


def _judge(
    got: _Answers, references: list[str], checks: Checks, rule: Rule, results: EvalResults
) -> list[str]:
    """Every model's scores into `results`, each artifact compared with the fine-tuned model on
    the same examples; returns the failures."""
    failures = []
    for name, outs in got.outputs.items():
        entry = ModelResult(
            runtime=got.runtimes[name],
            scores=score(outs, references, checks),
            speed=got.speeds.get(name) or None,
        )
        results.models[name] = entry
        if name in REFERENCE_MODELS:
            continue
        compared = compare_answers(got.outputs["fine-tuned"], outs, references, checks, rule)
        entry.relative = {m: c.relative for m, c in compared.items()}
        entry.paired = {m: c.to_dict() for m, c in compared.items()}
        entry.verdicts = {m: c.verdict("the fine-tuned model") for m, c in compared.items()}
        low = [m for m, c in compared.items() if c.worse]
        entry.passed = not low and name not in got.unreadable
        if name in got.unreadable:
            entry.error = got.unreadable[name]
            failures.append(f"{name}: {got.runtimes[name]} cannot run it: {got.unreadable[name]}")
        else:
            failures += [
                f"{name}: {m} {entry.verdicts[m]} (below {rule.min_relative:.0%}: {compared[m].relative:.1%})"
                for m in low
            ]
    return failures


PairSequences = list[tuple[list[int], list[int], int]]  # per pair: chosen ids, rejected ids, prompt length


def _pair_sequences(gate: Gate, limit: int) -> PairSequences | None:
    """The held-out preference pairs (after align) as the reference tokenizer renders them: the
    token ids every model scores. None for a model trained without preference pairs."""
    from transformers import AutoTokenizer

    from edgeft.data.pairs import read_pairs
    from edgeft.pipeline.evaluate import preference

    if not gate.merged.has("pairs-validation"):
        return None
    pairs = read_pairs(gate.merged.artifact_path("pairs-validation"))[:limit]
    return preference.sequences(pairs, AutoTokenizer.from_pretrained(gate.reference_dir))


def _preference(
    gate: Gate, got: _Answers, pairs: PairSequences | None, rule: Rule
) -> tuple[PreferenceResults | None, list[str]]:
    """Preference parity on the held-out pairs (edgeft.pipeline.evaluate.preference): each model's
    accuracy and margin (the models in transformers scored in `_answer_all`, every artifact here),
    every artifact judged against the tuned model, the tuned model against the SFT model and the
    base. (None, []) for a model trained without preference pairs."""
    from edgeft.judge.paired import compare_binary
    from edgeft.pipeline.evaluate import preference

    if pairs is None:
        return None, []
    scored = dict(got.preference)
    unreadable: dict[str, str] = {}
    for stage, art in gate.artifacts():
        rt, why = load_or_why(stage, art)
        if rt is not None:
            try:
                with rt:
                    scored[art.name] = preference.score(rt, pairs, f"{art.name} ({art.runtime})")
            except Exception as e:
                log.debug("%s could not score the pairs", art.name, exc_info=True)
                why = describe(e)
        if why is not None:
            unreadable[art.name] = why

    def compare(reference: list[bool], candidate: list[bool]) -> Any:
        return compare_binary(
            "preference",
            reference,
            candidate,
            min_relative=rule.min_relative,
            alpha=rule.alpha,
            min_discordant=rule.min_discordant,
        )

    tuned = scored["fine-tuned"][0]
    out = PreferenceResults(
        pairs=len(pairs),
        scoring="log-probability of each answer after the prompt, summed over its tokens (the same token ids in "
        "every runtime)",
        models={name: preference.summary(*v) for name, v in scored.items()},
    )
    failures = []
    for name, (prefers, _) in scored.items():
        if name in REFERENCE_MODELS:
            continue
        c = compare(tuned, prefers)
        out.paired[name] = c.to_dict()
        out.verdicts[name] = c.verdict("the fine-tuned model")
        if c.worse:
            failures.append(
                f"{name}: preference accuracy {out.verdicts[name]} (below {rule.min_relative:.0%}: {c.relative:.1%})"
            )
    for name, why in unreadable.items():
        out.models[name] = {"error": why}
        failures.append(f"{name}: cannot score the preference pairs: {why}")
    for before in ("sft", "base"):
        if before in scored:
            # As versus_base: the earlier model is the candidate that may be worse than the tuned one.
            c = compare(tuned, scored[before][0])
            out.versus[before] = {
                "p": c.p,
                "better": bool(c.p < rule.alpha and c.candidate < c.reference),
                "difference": c.reference - c.candidate,
                "tuned_only": c.losses,
                f"{before}_only": c.wins,
            }
    return out, failures


def _forgetting(cfg: Config, got: _Answers, general: tuple[Sequence[Prompt], list[str]]) -> dict[str, Any]:
    """chrF on the general-capability prompts, base against fine-tuned: catastrophic forgetting."""
    g = {k: score(v, general[1], Checks()) for k, v in got.general.items()}
    drop = 1 - g["fine-tuned"]["chrf"] / g["base"]["chrf"] if g["base"]["chrf"] > 0 else 0.0
    tolerance = cfg.eval.forgetting_tolerance
    if drop > tolerance:
        log.warning(
            "catastrophic forgetting: on the general prompts the fine-tuned model's chrF is %.0f%% "
            "below the base model's (tolerance %.0f%%)",
            100 * drop,
            100 * tolerance,
        )
    return {
        "prompts": len(general[0]),
        "scores": g,
        "chrf_drop": drop,
        "forgetting": drop > tolerance,
        "tolerance": tolerance,
    }


@in_session
def evaluate(
    cfg: Config,
    merge_dir: Path | None = None,
    export_dirs: list[Path] | None = None,
    out_dir: Path | None = None,
    *,
    force: bool = False,
) -> Stage:
    """Score base, fine-tuned model and every artifact on the held-out split; publish the results
    (replacing earlier eval results, nothing else without `force`)."""
    gate = Gate.open(cfg, stages.EVAL, merge_dir, export_dirs, out_dir, force=force)
    merged = gate.merged
    if not merged.resolved_base:
        raise InputError(
            f"{merged.path}: its manifest does not name the base model it was trained from: "
            f"re-run `edgeft merge` with this edgeft"
        )
    rows = read_split(merged.file("validation.jsonl"))
    prompts, references = _examples(rows, cfg.eval.max_examples)
    if not prompts:
        raise InputError(f"{merged.file('validation.jsonl')}: no held-out examples to evaluate on")
    fmt, fmt_desc = format_checker(cfg)
    checks = Checks(fmt, _example_tools(rows, len(prompts)))
    general = _general_prompts(cfg)
    rule = Rule(cfg.eval.min_relative, cfg.eval.alpha, cfg.eval.min_discordant)
    results = EvalResults(
        examples=len(prompts),
        max_new_tokens=cfg.eval.max_new_tokens,
        format=fmt_desc,
        min_relative=rule.min_relative,
        alpha=rule.alpha,
        min_discordant=rule.min_discordant,
    )
    pairs = _pair_sequences(gate, cfg.eval.max_examples)
    got = _answer_all(gate, prompts, general[0] if general else None, cfg.eval.max_new_tokens, pairs)
    outputs = got.outputs
    failures = _judge(got, references, checks, rule, results)
    results.preference, lost = _preference(gate, got, pairs, rule)
    failures += lost
    if "sft" in outputs:
        results.versus_sft = versus_base(outputs["fine-tuned"], outputs["sft"], references, checks, rule)
    ref_scores, base_scores = results.fine_tuned.scores, results.models["base"].scores
    results.improvement = {m: ref_scores[m] - base_scores[m] for m in ref_scores}
    results.versus_base = versus_base(outputs["fine-tuned"], outputs["base"], references, checks, rule)
    if not results.versus_base["exact_match"]["better"]:
        log.warning(
            "the fine-tuned model is not shown better than the base on exact match (%d examples, p = %.2g)",
            len(prompts),
            results.versus_base["exact_match"]["p"],
        )
    results.examples_needed = paired.examples_needed(
        ref_scores["exact_match"] * (1 - cfg.eval.min_relative), cfg.eval.alpha, cfg.eval.min_discordant
    )
    # What the registry pairs two versions on (edgeft.pipeline.evaluate.results): each example's id, each model's
    # answers, and whether each binary metric held.
    results.per_example = PerExample(
        ids=[example_id(p, r) for p, r in zip(prompts, references, strict=True)],
        references=references,
        answers=outputs,
        right={name: right(outs, references, checks) for name, outs in outputs.items()},
    )
    if general:
        results.general = _forgetting(cfg, got, general)
    results.samples = [
        {
            "prompt": p if isinstance(p, str) else p[-1]["content"],
            "reference": r,
            **{k: v[i] for k, v in outputs.items()},
        }
        for i, (p, r) in enumerate(zip(prompts, references, strict=True))
        if i < 5
    ]
    results.passed = not failures
    results.failures = failures
    return gate.publish(
        inputs_hash(cfg, [merged, *gate.exports]),
        "results",
        results.to_json(),
        markdown(results),
        failures,
        EvalFailed,
        f"evaluation: {len(failures)} regression(s) against the fine-tuned model",
        metrics={"fine_tuned": ref_scores, "base": base_scores}
        | ({"preference": results.preference.accuracy()} if results.preference else {}),
    )


def gate_rule(results: EvalResults) -> str:
    """The regression gate's rule in one sentence, with the run's settings."""
    if results.alpha is None:  # results written before the paired gate
        return f"an artifact fails below {results.min_relative:.0%} of its score on any metric."
    return (
        f"an artifact fails on a metric when it loses at least {results.min_discordant} examples the "
        f"fine-tuned model got right, the loss is significant (one-sided p < {results.alpha:g}: mid-p "
        f"McNemar; chrF: paired bootstrap) and it keeps less than {results.min_relative:.0%} of the score."
    )


def verdict_lines(results: EvalResults, short: bool = False) -> list[str]:
    """Per artifact and metric, the paired verdict ('indistinguishable from … on N examples' or
    'worse …, p = …'; `short`: one line per artifact, as the model card has it), then how many
    examples a drop of the margin's size needs (report and card)."""
    if short:
        lines = [
            f"- {name} against the fine-tuned model on {results.examples} examples: "
            + "; ".join(
                f"{METRIC_NAMES[k]} {Comparison.from_dict(m.paired[k]).short()}"
                for k in METRICS
                if k in m.paired
            )
            for name, m in results.models.items()
            if m.paired is not None
        ]
    else:
        lines = [
            f"- {name}, {METRIC_NAMES[k]}: {verdicts[k]}"
            for name, m in results.models.items()
            if (verdicts := m.verdicts or {})
            for k in METRICS
            if k in verdicts
        ]
    needed = results.examples_needed
    if lines and needed and results.alpha is not None:
        lines += [
            "",
            f"Telling apart a drop of {1 - results.min_relative:.0%} of the fine-tuned model's exact "
            f"match takes at least {needed} examples (80% power at alpha {results.alpha:g}, if the artifact "
            f"only loses answers); this evaluation has {results.examples}."
            + (
                " Below that, an artifact this much worse is likely to pass: add held-out examples."
                if needed > results.examples
                else ""
            ),
        ]
    return lines


def _versus(versus: dict[str, dict[str, Any]]) -> str:
    return ", ".join(
        f"{METRIC_NAMES[k]} {v['difference']:+.3f} ({'better' if v['better'] else 'not shown better'}, p = {v['p']:.2g})"
        for k, v in versus.items()
    )


def preference_lines(pref: PreferenceResults) -> list[str]:
    """The preference-parity section of results.md (and the model card)."""
    lines = [
        "## Preference parity (held-out pairs)",
        "",
        f"{pref.pairs} held-out preference pairs; a model prefers the chosen answer when its "
        f"{pref.scoring} is higher than the rejected one's.",
        "",
        "| model | prefers chosen | mean log-prob margin | vs fine-tuned |",
        "|---|---|---|---|",
    ]
    for name, m in pref.models.items():
        if "error" in m:
            lines.append(f"| {name} | – | – | cannot score: {m['error']} |")
            continue
        verdict = pref.verdicts.get(name, "–")
        lines.append(f"| {name} | {m['accuracy']:.3f} | {m['mean_margin']:+.2f} | {verdict} |")
    for before in ("sft", "base"):
        v = pref.versus.get(before)
        if v:
            lines.append(
                f"\nPreference-tuned vs {'the SFT model' if before == 'sft' else 'the base'}: "
                f"{v['difference']:+.3f} ({'better' if v['better'] else 'not shown better'}, p = {v['p']:.2g}; "
                f"{v['tuned_only']} pairs only the tuned model gets right, {v[before + '_only']} only the other)."
            )
    return lines


def markdown(results: EvalResults) -> str:
    metrics = results.metrics
    names = METRIC_NAMES | {"format": f"format ({results.format})"}
    lines = [
        "# edgeft eval results",
        "",
        f"{results.examples} held-out examples, greedy decoding, at most {results.max_new_tokens} new "
        f"tokens. Artifacts are compared with the fine-tuned model on the same examples: "
        + gate_rule(results),
        "",
        "| model | runtime | " + " | ".join(names[m] for m in metrics) + " | vs fine-tuned | result |",
        "|---|---|" + "---|" * len(metrics) + "---|---|",
    ]
    for name, m in results.models.items():
        cells = " | ".join(f"{m.scores[k]:.3f}" if k != "chrf" else f"{m.scores[k]:.1f}" for k in metrics)
        rel = " / ".join(f"{m.relative[k]:.0%}" for k in metrics) if m.relative is not None else "–"
        result = ("pass" if m.passed else "FAIL") if m.passed is not None else "–"
        lines.append(f"| {name} | {m.runtime} | {cells} | {rel} | {result} |")
    imp = results.improvement
    versus = results.versus_base

    def beats(k: str) -> str:
        v = versus.get(k)
        return "" if v is None else f" ({'better' if v['better'] else 'not shown better'}, p = {v['p']:.2g})"

    lines += [
        "",
        "Fine-tuned vs base: "
        + ", ".join(
            (f"{names[k].split(' (')[0]} {imp[k]:+.3f}" if k != "chrf" else f"chrF {imp[k]:+.1f}") + beats(k)
            for k in metrics
        )
        + ".",
    ]
    verdicts = verdict_lines(results)
    if verdicts:
        lines += ["", "## Each artifact against the fine-tuned model", "", *verdicts]
    if results.versus_sft:
        lines += [
            "",
            "Fine-tuned (preference-tuned) vs the SFT model it started from: "
            + _versus(results.versus_sft)
            + ".",
        ]
    if results.preference is not None:
        lines += ["", *preference_lines(results.preference)]
    if results.general is not None:
        g = results.general
        lines += [
            "",
            f"General-capability prompts ({g['prompts']}): chrF base {g['scores']['base']['chrf']:.1f}, "
            f"fine-tuned {g['scores']['fine-tuned']['chrf']:.1f} ({-100 * g['chrf_drop']:+.0f}%)"
            + (" — **catastrophic forgetting flagged**" if g["forgetting"] else " — no forgetting flagged")
            + ".",
        ]
    lines += ["", "**Passed.**" if results.passed else "**Failed:**", ""]
    lines += [f"- {f}" for f in results.failures]
    lines += ["", "## Samples", ""]
    for s in results.samples:
        lines += [
            f"- prompt: {s['prompt']!r}",
            f"  - reference: {s['reference']!r}",
            *(f"  - {k}: {v!r}" for k, v in s.items() if k not in ("prompt", "reference")),
        ]
    return "\n".join(lines) + "\n"
