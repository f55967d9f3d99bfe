"""Dataset checks beyond a single row: duplicates, leakage, lengths under the model's template.

Consumes the data section of a config (or a file and options from `edgeft data check`) and,
when given, the model's tokenizer; produces a `DataReport`: the train/validation split, every
finding with its location and severity, token-length statistics and the rendered form of one
example, exactly as the model will see it.

    edgeft data check examples/nl2sql/data/nl2sql.jsonl -c examples/nl2sql/edgeft.yaml
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from edgeft.core.errors import ConfigError
from edgeft.core.rowfilter import compile_filter
from edgeft.data import neardup
from edgeft.data.rows import (
    MIN_EXAMPLES,
    Example,
    Finding,
    Findings,
    LoadReport,
    file_hash,
    load_examples,
    split,
)

# Jaccard similarity of character 5-gram sets (prompt and answer each) above which two examples
# are near-duplicates: catches copies with whitespace, case, punctuation or a word changed.
NEAR_DUPLICATE_THRESHOLD = 0.9
MAX_PAIRS_LISTED = 50


@dataclass
class DataReport(Findings):
    train: list[Example]
    validation: list[Example]
    findings: list[Finding] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)
    rendered_example: str | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.info,
            "train_rows": len(self.train),
            "augmented_rows": sum(e.augmented is not None for e in self.train),
            "validation_rows": len(self.validation),
            "errors": len(self.errors),
            "warnings": len(self.warnings),
            "findings": [f.to_dict() for f in self.findings],
            "token_lengths": self.stats,
            "rendered_example": self.rendered_example,
        }


class Keyed(Protocol):
    """A row with a location and an identity: an Example, or a preference Pair."""

    where: str

    def key(self) -> bytes: ...


def exact_duplicates(examples: Sequence[Keyed]) -> list[Finding]:
    seen: dict[bytes, Keyed] = {}
    out = []
    for e in examples:
        k = e.key()
        if k in seen:
            out.append(Finding("warning", e.where, "duplicate", f"exact duplicate of {seen[k].where}"))
        else:
            seen[k] = e
    return out


def near_duplicates(
    examples: list[Example], threshold: float = NEAR_DUPLICATE_THRESHOLD
) -> tuple[list[Finding], dict[str, Any]]:
    """Pairs whose prompts *and* answers are each at least `threshold` similar (5-gram Jaccard),
    each example once with its most similar earlier example (a cluster of k near-copies gives
    k - 1 warnings, not k² / 2); exact duplicates are reported as such. Both halves must match:
    rows made from one template share most of their prompt but differ in the answer, and are not
    duplicates. Linear time (edgeft/data/neardup.py): where a template puts very many rows together,
    each is compared with a bounded number of them, and the record (second value) counts the
    rows that were (`rows_not_fully_compared`)."""
    found, capped = neardup.within([e.parts() for e in examples], [e.key() for e in examples], threshold)
    out = [
        Finding(
            "warning",
            examples[i].where,
            "near-duplicate",
            f"near-duplicate of {examples[j].where} (similarity {sim:.2f})",
        )
        for i, (sim, j) in sorted(found.items())
    ]
    cap, confirm = neardup.limits(len(examples))
    return out, {
        "threshold": threshold,
        "rows_not_fully_compared": capped,
        "bucket_cap": cap,
        "exact_comparisons_per_row": confirm,
    }


def leakage(train: list[Example], validation: list[Example]) -> list[Finding]:
    seen = {e.key(): e for e in train}
    return [
        Finding(
            "error",
            v.where,
            "leakage",
            f"validation example also in the training data ({seen[v.key()].where}): "
            f"it would overstate validation quality; remove one or use data.dedup",
        )
        for v in validation
        if v.key() in seen
    ]


def render(example: Example, tokenizer: Any) -> str:
    if example.messages is not None:
        return tokenizer.apply_chat_template(example.messages, tokenize=False)
    return example.text or ""


def token_lengths(
    examples: list[Example], tokenizer: Any, max_length: int | None
) -> tuple[list[Finding], dict]:
    """Length of each example as the model sees it (its template, its tokenizer). A conversation
    the template refuses (`raise_exception`, e.g. a system turn it does not allow) is a finding."""
    from jinja2.exceptions import TemplateError

    from edgeft.models.base import special_tokens
    from edgeft.models.template import guard

    out: list[Finding] = []
    first = next((e for e in examples if e.messages is not None), None)
    if first is not None:  # bounded once, before the unbounded renderer sees every row
        guard(
            tokenizer.chat_template,
            first.messages,
            source=f"base model {tokenizer.name_or_path}",
            add_generation_prompt=False,
            special_tokens=special_tokens(tokenizer),
        )
    # Rendered one by one (the template may refuse a row), tokenized in batches: the tokenizer's
    # batch encoding runs on every core, one call per row cost 130 µs of Python each.
    texts: list[str] = []
    measured: list[Example] = []
    plain: list[bool] = []
    for e in examples:
        if e.messages is not None:
            try:
                texts.append(tokenizer.apply_chat_template(e.messages, tokenize=False))
            except TemplateError as err:
                out.append(
                    Finding(
                        "error",
                        e.where,
                        "template",
                        f"the model's chat template refuses this conversation: {err}",
                    )
                )
                continue
        else:
            texts.append(e.text or "")
        measured.append(e)
        plain.append(e.messages is None)
    lengths = []
    for start in range(0, len(texts), 4096):
        chunk = slice(start, start + 4096)
        chats = tokenizer(texts[chunk], add_special_tokens=False, return_attention_mask=False)["input_ids"]
        lengths += [len(ids) for ids in chats]
        # Text rows: with the tokenizer's special tokens (BOS), + EOS appended in training.
        for k, is_plain in enumerate(plain[chunk], start):
            if is_plain:
                lengths[k] = len(tokenizer(texts[k])["input_ids"]) + 1
    for e, n in zip(measured, lengths, strict=True):
        if max_length and n > max_length:
            out.append(
                Finding(
                    "error",
                    e.where,
                    "too-long",
                    f"{n} tokens under the model's template, over train.max_seq_length "
                    f"{max_length}: shorten it or raise the limit",
                )
            )
    arr = np.array(lengths or [0])
    stats = {
        "min": int(arr.min()),
        "median": float(np.median(arr)),
        "p95": float(np.percentile(arr, 95)),
        "max": int(arr.max()),
        "total": int(arr.sum()),
    }
    return out, stats


def dedupe(examples: list[Example]) -> tuple[list[Example], int]:
    seen, out = set(), []
    for e in examples:
        if e.key() not in seen:
            seen.add(e.key())
            out.append(e)
    return out, len(examples) - len(out)


def _loaded(report: LoadReport) -> list[Finding]:
    findings = list(report.findings)
    if len(report.examples) < MIN_EXAMPLES:
        kept = (
            (
                f" (data.filter kept {report.filter.kept} of {report.filter.rows} rows: "
                f"`edgeft data check` shows what each condition removed)"
            )
            if report.filter
            else ""
        )
        findings.append(
            Finding(
                "error",
                str(report.path),
                "too-few",
                f"{len(report.examples)} usable example(s); at least {MIN_EXAMPLES} needed{kept}",
            )
        )
    return findings


def analyse(
    train_path: Path,
    *,
    validation_path: Path | None = None,
    columns: dict[str, str] | None = None,
    system_prompt: str | None = None,
    val_ratio: float = 0.1,
    seed: int = 0,
    dedup: bool = False,
    tokenizer: Any = None,
    max_length: int | None = None,
    near_duplicate_threshold: float = NEAR_DUPLICATE_THRESHOLD,
    row_filter: str | list[str] | None = None,
    augment: Any = None,
    paraphraser: tuple[str, str] | None = None,
    trust_remote_code: bool = False,
) -> DataReport:
    """Load, check and split a dataset; every problem becomes a finding (nothing raises but a
    filter that does not parse, which is a ConfigError). `augment` (data.augment) adds copies to
    the training split; `paraphraser` is (name, model directory) of the model that paraphrases."""
    conditions = compile_filter(row_filter)
    loaded = load_examples(train_path, columns, system_prompt, conditions)
    findings = _loaded(loaded)
    examples = loaded.examples
    info: dict[str, Any] = {
        "train_file": str(train_path),
        "train_sha256": file_hash(train_path),
        "rows": loaded.rows,
        "usable": len(examples),
        "formats": dict(loaded.formats),
    }
    tooled = [e for e in examples if e.tools]
    if tooled:
        from edgeft.data.tools import CALL_OPEN

        info["tools"] = {
            "rows": len(tooled),
            "functions": len({name for e in tooled for name in e.tools or {}}),
            "calls": sum(
                m["content"].count(CALL_OPEN)
                for e in tooled
                for m in e.messages or []
                if m["role"] == "assistant"
            ),
        }
    if loaded.filter is not None:
        info["filter"] = {"conditions": loaded.filter.conditions, "train": loaded.filter.to_dict()}
    if dedup:
        examples, removed = dedupe(examples)
        info["duplicates_removed"] = removed
    else:
        findings += exact_duplicates(examples)
    near, info["near_duplicates"] = near_duplicates(examples, near_duplicate_threshold)
    findings += near
    if validation_path is not None:
        vloaded = load_examples(validation_path, columns, system_prompt, conditions)
        findings += vloaded.findings
        if vloaded.filter is not None:
            info["filter"]["validation"] = vloaded.filter.to_dict()
        train, val = examples, vloaded.examples
        info.update(validation_file=str(validation_path), validation_sha256=file_hash(validation_path))
        if not val:
            findings.append(Finding("error", str(validation_path), "too-few", "no usable validation example"))
    else:
        train, val = split(examples, val_ratio, seed) if examples else ([], [])
    findings += leakage(train, val)
    report = DataReport(train, val, findings, info=info)
    if tokenizer is not None and examples:
        long_findings, report.stats = token_lengths(train + val, tokenizer, max_length)
        report.findings += long_findings
        if not any(f.check == "template" for f in long_findings):
            report.rendered_example = render(train[0] if train else val[0], tokenizer)
    if augment is not None and (augment.typos > 0 or augment.paraphrases > 0) and train and not report.errors:
        _augment(
            report, augment, tokenizer, max_length, near_duplicate_threshold, paraphraser, trust_remote_code
        )
    return report


def _augment(
    report: DataReport,
    augment: Any,
    tokenizer: Any,
    max_length: int | None,
    threshold: float,
    paraphraser: tuple[str, str] | None,
    trust_remote_code: bool,
) -> None:
    """data.augment on the checked training split: typo copies (edgeft.data.augment) and paraphrases
    (edgeft.data.paraphrase), then the checks every copy passes or is dropped for, counted per kind:
    too-long (over train.max_seq_length tokens), leaks-validation (the same as, or a
    near-duplicate of, a validation row) and duplicate (of a training row or an earlier copy)."""
    from edgeft.data.augment import with_typos

    copies: list[Example] = []
    record: dict[str, Any] = {}
    if augment.typos > 0:
        added, record["typos"] = with_typos(report.train, augment.typos, augment.typo_rate, augment.seed)
        copies += added
    if augment.paraphrases > 0:
        from edgeft.data.paraphrase import with_paraphrases

        if paraphraser is None:
            raise ConfigError(
                "data.augment.paraphrases: name the model that paraphrases "
                "(data.augment.paraphrase_model, or a config's base_model)"
            )
        added, record["paraphrases"] = with_paraphrases(
            report.train, augment, *paraphraser, trust_remote_code
        )
        record["paraphrases"]["near_duplicate_of_source"] = 0
        copies += added
    seen = {e.key() for e in report.train}
    held_out = {e.key() for e in report.validation}
    near_held_out = neardup.across(
        [c.parts() for c in copies],
        [c.key() for c in copies],
        [v.parts() for v in report.validation],
        [v.key() for v in report.validation],
        threshold,
    )
    sources = {e.where: e for e in report.train}
    kept = []
    for n, c in enumerate(copies):
        reason = None
        if (
            tokenizer is not None
            and max_length
            and len(tokenizer.apply_chat_template(c.messages, tokenize=True)) > max_length
        ):
            reason = "too-long"
        elif c.key() in held_out or n in near_held_out:
            reason = "leaks-validation"
        elif c.key() in seen:
            reason = "duplicate"
        if reason is None:
            seen.add(c.key())
            kept.append(c)
            if c.augmented == "paraphrase":  # near its source: kept, as intended; counted
                near = (
                    neardup.jaccard(
                        neardup.shingles(c.parts()[0]), neardup.shingles(sources[str(c.source)].parts()[0])
                    )
                    >= threshold
                )
                record["paraphrases"]["near_duplicate_of_source"] += near
            continue
        kind = record["typos" if c.augmented == "typos" else "paraphrases"]
        kind["dropped"][reason] = kind["dropped"].get(reason, 0) + 1
        kind["rows_added"] -= 1
    report.train = report.train + kept
    report.info["augmentation"] = record


def analyse_config(cfg: Any, tokenizer: Any = None) -> DataReport:
    """The data checks of a config's data section, as training runs them."""
    d = cfg.data
    return analyse_section(
        d,
        cfg.path(d.train),
        cfg.path(d.validation) if d.validation else None,
        tokenizer=tokenizer,
        max_length=cfg.train.max_seq_length,
        paraphraser=paraphraser(cfg),
        trust_remote_code=cfg.trust_remote_code,
    )


def analyse_section(
    d: Any,
    train_path: Path,
    validation_path: Path | None,
    *,
    tokenizer: Any = None,
    max_length: int | None = None,
    paraphraser: tuple[str, str] | None = None,
    trust_remote_code: bool = False,
) -> DataReport:
    """`analyse` as the data section `d` (a DataConfig) asks for it: the one place its keys become
    the checks' arguments, so training and `edgeft data check` cannot drift apart."""
    return analyse(
        train_path,
        validation_path=validation_path,
        columns=d.columns or None,
        system_prompt=d.system_prompt,
        val_ratio=d.val_ratio,
        seed=d.seed,
        dedup=d.dedup,
        tokenizer=tokenizer,
        max_length=max_length,
        near_duplicate_threshold=d.near_duplicate_threshold,
        row_filter=d.filter,
        augment=d.augment,
        paraphraser=paraphraser,
        trust_remote_code=trust_remote_code,
    )


def paraphraser(cfg: Any) -> tuple[str, str] | None:
    """(name, model directory) of the model data.augment.paraphrases uses: paraphrase_model, else
    the base model; None when paraphrases are off."""
    if cfg.data.augment.paraphrases <= 0:
        return None
    from edgeft.models.base import resolve_base

    spec = cfg.data.augment.paraphrase_model or cfg.base_model
    return spec, resolve_base(spec, cfg.root, cfg.trust_remote_code)


def format_filter(report: DataReport) -> list[str]:
    """data.filter's funnel: per file, rows, what each condition removed, and what was kept."""
    spec = report.info.get("filter")
    if not spec:
        return []
    lines = []
    for part in ("train", "validation"):
        counts = spec.get(part)
        if counts is None:
            continue
        file = report.info[f"{part}_file"]
        lines.append(f"data.filter on {file}: kept {counts['kept']} of {counts['rows']} rows")
        width = max(len(r["condition"]) for r in counts["removed_by"])
        lines += [f"  {r['condition']:<{width}}  removed {r['rows']}" for r in counts["removed_by"]]
        lines += [
            f"  field {name!r} absent or null in {n} row(s)" for name, n in counts["missing_fields"].items()
        ]
    return lines


def format_near_duplicates(report: DataReport) -> list[str]:
    """A note when the near-duplicate check compared some rows with only part of their look-alikes."""
    record = report.info.get("near_duplicates") or {}
    n = record.get("rows_not_fully_compared", 0)
    if not n:
        return []
    return [
        f"near-duplicate check: {n} row(s) resemble more earlier rows than it compares in bounded time "
        f"(templated data?): each was compared with at most {record['bucket_cap']} earlier rows per LSH bucket "
        f"and exactly with its {record['exact_comparisons_per_row']} most similar, so some near-duplicates "
        f"may be unreported"
    ]


def format_augmentation(report: DataReport) -> list[str]:
    """data.augment's counts: rows added per kind, what was dropped and why, a few paraphrases."""
    record = report.info.get("augmentation", {})
    lines = []
    dropped = {
        k: ", ".join(f"{reason} {n}" for reason, n in r["dropped"].items()) or "none"
        for k, r in record.items()
    }
    if "typos" in record:
        t = record["typos"]
        lines.append(
            f"data.augment: {t['rows_added']} training rows added with typos ({t['copies']} per "
            f"conversation, rate {t['rate']:g}, seed {t['seed']}; dropped: {dropped['typos']})"
        )
    if "paraphrases" in record:
        p = record["paraphrases"]
        how = (
            "greedy"
            if not p["temperature"]
            else f"sampled at temperature {p['temperature']:g}, seed {p['seed']}"
        )
        lines.append(
            f"data.augment: {p['rows_added']} of {p['candidates']} paraphrased copies kept ({p['model']}, "
            f"{how}; dropped: {dropped['paraphrases']}; {p['near_duplicate_of_source']} near-duplicates "
            f"of their source, kept)"
        )
        lines += [f"  {s['source']!r} -> {s['paraphrase']!r}" for s in p["samples"]]
    if record:
        lines.append("the validation split is never augmented; train.jsonl marks each copy and its source")
    return lines


def format_table(report: DataReport) -> str:
    """The findings as an aligned, human-readable table."""
    if not report.findings:
        return "no problems found"
    rows = [(f.severity, f.check, f.where, f.message) for f in report.findings]
    w = [max(len(r[i]) for r in [("severity", "check", "where"), *rows]) for i in range(3)]
    header = f"{'severity':<{w[0]}}  {'check':<{w[1]}}  {'where':<{w[2]}}  message"
    lines = [header, "-" * len(header)]
    listed = 0
    for r in rows:
        if r[1] == "near-duplicate" and listed >= MAX_PAIRS_LISTED:
            continue
        listed += r[1] == "near-duplicate"
        lines.append(f"{r[0]:<{w[0]}}  {r[1]:<{w[1]}}  {r[2]:<{w[2]}}  {r[3]}")
    hidden = sum(r[1] == "near-duplicate" for r in rows) - listed
    if hidden > 0:
        lines.append(f"... and {hidden} more near-duplicate pairs (all in --json)")
    return "\n".join(lines)


def data_files(cfg: Any) -> list[Path]:
    return [cfg.path(cfg.data.train)] + ([cfg.path(cfg.data.validation)] if cfg.data.validation else [])
