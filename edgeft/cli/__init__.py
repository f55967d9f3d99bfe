"""The edgeft command line: thin Click commands over the stage functions.

Each command parses its options, calls one stage function, and prints the directory it made
on stdout; logs and progress go to stderr. An `EdgeftError` becomes `Error: <message>` on
stderr with its exit code (see edgeft/core/errors.py and docs/safety.md).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from edgeft import __version__
from edgeft.core.config import Config, DataConfig
from edgeft.core.errors import EdgeftError
from edgeft.runtimes import Sampling

if TYPE_CHECKING:
    from edgeft.registry.store import Registry

CONFIG_OPTION = click.option(
    "-c",
    "--config",
    "config_path",
    required=True,
    type=click.Path(path_type=Path),
    help="edgeft.yaml: a section per stage (see docs/config.md).",
)
FORCE_OPTION = click.option("--force", is_flag=True, help="Replace an existing output directory.")
SET_OPTION = click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override a config key, e.g. --set train.max_steps=10 (YAML value syntax).",
)


class EdgeftGroup(click.Group):
    """Turns EdgeftError into `Error: ...` + its exit code, everywhere below the root (each line
    cut to a readable length); a full disk met outside a stage writer (which names its own
    folder) becomes NoSpaceError too, and a path with a name too long for the file system an
    InputError."""

    def invoke(self, ctx: click.Context) -> Any:
        import errno

        from edgeft.core.errors import InputError, NoSpaceError, clip_lines, no_space

        try:
            try:
                return super().invoke(ctx)
            except OSError as e:
                if e.errno != errno.ENAMETOOLONG:
                    raise
                path = str(e.filename)
                raise InputError(
                    f"{path if len(path) <= 300 else path[:200] + '…' + path[-60:]}: a name in this path is too long for the file system "
                    f"(255 bytes per name, and edgeft names its temporaries after its outputs, adding "
                    f"about 25): choose a shorter path"
                ) from None
            except Exception as e:
                if isinstance(e, EdgeftError) or not no_space(e):
                    raise
                where = getattr(no_space(e), "filename", None)
                raise NoSpaceError(
                    f"no space left on the disk{f' holding {where}' if where else ''}: free some "
                    f"space and run the command again"
                ) from e
        except EdgeftError as e:
            click.echo(f"Error: {clip_lines(str(e))}", err=True)
            ctx.exit(e.exit_code)


def _mistral_regex_false_alarm(record: logging.LogRecord) -> bool:
    """False (drop it) for transformers 4.57.6's "incorrect regex pattern … fix_mistral_regex" warning
    on a folder whose config.json is not a Mistral model: it fires for every local tokenizer of more
    than 100k tokens saved by 4.57.3+ (Gemma 3, Qwen; transformers#44031, fixed upstream by #45444)
    and changes nothing in how it tokenizes."""
    import re

    message = record.getMessage()
    found = re.search(r"loading from '(.*)' with an incorrect regex", message)
    if "fix_mistral_regex" not in message or not found:
        return True
    try:
        model_type = json.loads((Path(found.group(1)) / "config.json").read_text()).get("model_type")
    except (OSError, ValueError, AttributeError):
        return True
    return model_type in {"mistral", "mistral3", "voxtral", "ministral", "pixtral"}


def _setup_logging(verbose: int, quiet: bool) -> None:
    level = logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO
    # edgeft's own log at `level`; libraries (ONNX Runtime's quantizer, datasets, …) are chatty
    # at INFO, so theirs only from WARNING unless -v.
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format="edgeft: %(message)s",
        stream=sys.stderr,
        force=True,
    )
    logging.getLogger("edgeft").setLevel(level)
    # bitsandbytes warns at import that it cannot fetch an optional CPU kernel from a hub; its
    # built-in CPU path is used instead, so the warning says nothing a user can act on.
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
    logging.getLogger("transformers.tokenization_utils_base").addFilter(_mistral_regex_false_alarm)
    if quiet:
        os.environ.setdefault("TQDM_DISABLE", "1")


def _load(config_path: Path, overrides: tuple[str, ...] = ()):
    from edgeft.core.config import load_config, parse_overrides

    return load_config(config_path, parse_overrides(overrides))


@click.group(cls=EdgeftGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="edgeft")
@click.option("-v", "--verbose", count=True, help="More log output.")
@click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors on stderr.")
def cli(verbose: int, quiet: bool) -> None:
    """Fine-tune a base LLM on your examples and ship verified GGUF and ONNX artifacts.

    \b
    edgeft build -c examples/nl2sql/edgeft.yaml     # everything, from one config
    edgeft data check data/train.jsonl              # validate examples first
    """
    _setup_logging(verbose, quiet)


@cli.command()
@CONFIG_OPTION
@FORCE_OPTION
@SET_OPTION
@click.option(
    "--register", is_flag=True, help="Then register the dist in the config's registry (a new version)."
)
def build(config_path: Path, force: bool, overrides: tuple[str, ...], register: bool) -> None:
    """Run train → (align) → merge → export → verify → eval → package; print the dist directory.

    align (DPO after SFT) runs when the config has align.pairs.

    Stages whose inputs and files are unchanged since the last build are reused; an interrupted
    training of the same inputs is resumed. --force re-runs everything and may replace output
    directories edgeft did not write. --register adds the dist to the registry as a new version
    (an unchanged dist is its existing version).

    \b
    edgeft build -c examples/nl2sql/edgeft.yaml
    edgeft build -c examples/nl2sql/edgeft.yaml --register
    """
    from edgeft.cli.build import build as run_build

    cfg = _load(config_path, overrides)

    def on_stage(name: str, state: str) -> None:
        click.echo(f"edgeft: [{name}] {state}", err=True)

    result = run_build(cfg, force=force, on_stage=on_stage)
    click.echo(
        f"edgeft: ran {', '.join(result.ran) or 'nothing'}; reused {', '.join(result.reused) or 'nothing'}",
        err=True,
    )
    if register:
        from edgeft.registry.store import Registry

        name, number, new = Registry(cfg.path(cfg.registry)).add(result.dist)
        click.echo(
            f"edgeft: {'registered as' if new else 'already registered as'} {name}:{number} in "
            f"{cfg.path(cfg.registry)}",
            err=True,
        )
    click.echo(str(result.dist))


@cli.group()
def data() -> None:
    """Inspect and validate training examples."""


def _column_mapping(configured: dict[str, str], given: tuple[str, ...]) -> dict[str, str]:
    """data.columns with each --column CANONICAL=YOURS laid over it."""
    from edgeft.core.errors import InputError

    mapping = dict(configured)
    for item in given:
        key, _, value = item.partition("=")
        if not value:
            raise InputError(f"--column {item!r}: expected CANONICAL=YOURS, e.g. prompt=question")
        mapping[key] = value
    return mapping


def _data_tokenizer(model: str | None, cfg: Config | None) -> Any:
    """The tokenizer lengths are checked under (--model, else the config's base), or None."""
    source = model or (cfg.base_model if cfg else None)
    if not source:
        return None
    from transformers import AutoTokenizer

    from edgeft.models.base import ensure_chat_template, resolve_base

    trust = cfg.trust_remote_code if cfg else False
    tokenizer = AutoTokenizer.from_pretrained(
        resolve_base(source, cfg.root if cfg else None, trust), trust_remote_code=trust
    )
    ensure_chat_template(tokenizer)
    return tokenizer


def _echo_data_report(report: Any, train_path: Path) -> None:
    """The data check's findings as a table, then its summary lines."""
    from edgeft.data.check import format_augmentation, format_filter, format_near_duplicates, format_table

    info = report.info
    fmts = ", ".join(f"{n} {k}" for k, n in info["formats"].items()) or "none"
    if info.get("tools"):
        t = info["tools"]
        fmts += f"; {t['rows']} with tools: {t['functions']} functions, {t['calls']} calls"
    click.echo(format_table(report))
    for line in format_filter(report) + format_near_duplicates(report) + format_augmentation(report):
        click.echo(line)
    click.echo(
        f"{train_path}: {info['usable']} usable of {info['rows']} rows ({fmts}); "
        f"{len(report.errors)} error(s), {len(report.warnings)} warning(s); "
        f"split {len(report.train)} train / {len(report.validation)} validation"
    )
    if report.stats:
        s = report.stats
        click.echo(
            f"tokens per example: min {s['min']}, median {s['median']:g}, p95 {s['p95']:g}, max {s['max']}"
        )
    if report.rendered_example is not None:
        click.echo("first training example as the model sees it:\n" + report.rendered_example)


@data.command("check")
@click.argument("file", type=click.Path(path_type=Path), required=False)
@click.option(
    "-c",
    "--config",
    "config_path",
    type=click.Path(path_type=Path),
    help="Take the data section, base model and max length from this config.",
)
@click.option("--model", help="Tokenizer (HF id or directory) for length checks [the config's base_model].")
@click.option("--max-length", type=int, help="Token limit per example [train.max_seq_length].")
@click.option("--validation", type=click.Path(path_type=Path), help="Explicit validation file.")
@click.option(
    "--column",
    "columns",
    multiple=True,
    metavar="CANONICAL=YOURS",
    help="Map a field, e.g. --column prompt=question (repeatable).",
)
@click.option("--val-ratio", type=float, help=f"Validation share of the split [{DataConfig.val_ratio}].")
@click.option("--seed", type=int, help=f"Split seed [{DataConfig.seed}].")
@click.option("--dedup", is_flag=True, default=None, help="Drop exact duplicates before splitting.")
@click.option(
    "--filter",
    "conditions",
    multiple=True,
    metavar="CONDITION",
    help="Keep rows passing this condition, e.g. --filter 'rating >= 4' (repeatable; replaces data.filter).",
)
@click.option(
    "--pairs",
    "pairs_asked",
    is_flag=True,
    help="Read FILE as preference pairs (a pairs file is recognised by itself; an `edgeft serve` log "
    "folder is paired from its feedback).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON on stdout.")
def data_check(
    file: Path | None,
    config_path: Path | None,
    model: str | None,
    max_length: int | None,
    validation: Path | None,
    columns: tuple[str, ...],
    val_ratio: float | None,
    seed: int | None,
    dedup: bool | None,
    conditions: tuple[str, ...],
    pairs_asked: bool,
    as_json: bool,
) -> None:
    """Check a dataset (JSONL, JSON, CSV, Parquet, datasets dir): every problem with its location.

    Rows may be alpaca, chat `messages`, prompt/completion or text; a file of preference pairs
    (prompt, chosen, rejected) gets the pair checks, and -c checks the config's align.pairs
    too. With a tokenizer (--model,
    or -c), also checks lengths under the model's chat template and shows one example exactly
    as the model sees it. With data.filter (or --filter), prints how many rows each condition
    removed. Exits 4 when any error is found; warnings (duplicates) do not fail.

    \b
    edgeft data check examples/nl2sql/data/nl2sql.jsonl
    edgeft data check -c examples/nl2sql/edgeft.yaml
    edgeft data check logs.jsonl --filter 'rating >= 4' --filter 'len(reply) > 50'
    edgeft data check examples/nl2sql/data/nl2sql-pairs.jsonl
    edgeft data check served/ --pairs
    """
    from edgeft.core.errors import DataError, InputError
    from edgeft.data.check import analyse_section, paraphraser

    cfg = _load(config_path) if config_path else None
    d = cfg.data if cfg else DataConfig()
    if file is not None:
        train_path = file
    elif cfg is not None:
        train_path = cfg.path(d.train)
    else:
        raise InputError("give a data FILE, or -c CONFIG to check its data section")
    if file is not None and (pairs_asked or _holds_pairs(file)):
        _check_pairs(file, validation, cfg, _data_tokenizer(model, cfg), max_length, [], as_json)
        return
    if conditions:
        from edgeft.core.rowfilter import compile_filter

        compile_filter(list(conditions), key="--filter")
    # The command line's options replace their config keys; analyse_section maps the section to the checks.
    d = dataclasses.replace(
        d,
        columns=_column_mapping(d.columns, columns),
        val_ratio=val_ratio if val_ratio is not None else d.val_ratio,
        seed=seed if seed is not None else d.seed,
        dedup=dedup if dedup is not None else d.dedup,
        filter=list(conditions) if conditions else d.filter,
    )
    report = analyse_section(
        d,
        train_path,
        validation or (cfg.path(d.validation) if cfg and d.validation else None),
        tokenizer=_data_tokenizer(model, cfg),
        max_length=max_length if max_length is not None else (cfg.train.max_seq_length if cfg else None),
        paraphraser=paraphraser(cfg) if cfg else None,
        trust_remote_code=cfg.trust_remote_code if cfg else False,
    )
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2, ensure_ascii=False))
    else:
        _echo_data_report(report, train_path)
    if report.errors:
        raise DataError(f"{train_path}: {len(report.errors)} error(s) in the data")
    if cfg is not None and file is None and cfg.aligned:  # the config's preference pairs too
        _check_pairs(
            cfg.path(cfg.align.pairs),
            cfg.path(cfg.align.validation) if cfg.align.validation else None,
            cfg,
            _data_tokenizer(model, cfg),
            None,
            [e.messages for e in report.validation if e.messages],
            as_json,
        )


def _check_pairs(
    path: Path,
    validation: Path | None,
    cfg: Config | None,
    tokenizer: Any,
    max_length: int | None,
    held_out: list[Any],
    as_json: bool,
) -> None:
    """`edgeft data check` of preference pairs: findings, counts, the split; exit 4 on errors."""
    from edgeft.core.errors import DataError
    from edgeft.data import pairs

    a = cfg.align if cfg else None
    report = pairs.analyse(
        path,
        validation_path=validation,
        system_prompt=cfg.data.system_prompt if cfg else None,
        val_ratio=a.val_ratio if a else 0.1,
        seed=a.seed if a else 0,
        tokenizer=tokenizer,
        max_length=max_length or (a.max_length if a and a.pairs else None),
        held_out=held_out,
    )
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2, ensure_ascii=False))
    else:
        for f in report.findings:
            click.echo(f"{f.severity}: {f}")
        log = report.info.get("from_served_log")
        if log:
            dropped = {
                k.removeprefix("dropped_"): n for k, n in log.items() if k.startswith("dropped_") and n
            }
            click.echo(
                f"{path}: {log['completions']} logged completion(s), {log['with_feedback']} with feedback; paired "
                f"{log['pairs_from_corrections']} from corrections and {log['pairs_from_ratings']} from ratings; "
                + (
                    "dropped " + ", ".join(f"{n} ({k.replace('_', ' ')})" for k, n in dropped.items())
                    if dropped
                    else "nothing dropped"
                )
            )
        lengths = report.info.get("token_lengths")
        click.echo(
            f"{path}: {len(report.train) + len(report.validation)} usable preference pair(s) of "
            f"{report.info['rows']} rows; {len(report.errors)} error(s), {len(report.warnings)} warning(s); "
            f"split {len(report.train)} train / {len(report.validation)} validation"
            + (
                f"; tokens per pair (prompt + longer answer): median {lengths['median']:g}, max {lengths['max']}"
                if lengths
                else ""
            )
        )
    if report.errors:
        raise DataError(f"{path}: {len(report.errors)} error(s) in the preference pairs")


def _holds_pairs(path: Path) -> bool:
    """Whether a data file's first readable row is a preference pair (chosen and rejected)."""
    from edgeft.data.rows import read_rows

    if not path.is_file():
        return False
    for _, row in read_rows(path):
        if isinstance(row, dict):
            return "chosen" in row and "rejected" in row
    return False


@cli.command()
@CONFIG_OPTION
@click.option("--out", type=click.Path(path_type=Path), help="Output directory [<workdir>/<name>/train].")
@click.option("--resume", is_flag=True, help="Continue an interrupted run from its last checkpoint.")
@FORCE_OPTION
@SET_OPTION
def train(config_path: Path, out: Path | None, resume: bool, force: bool, overrides: tuple[str, ...]) -> None:
    """Fine-tune on the config's data: a LoRA adapter, on a 4-bit base, or every weight.

    train.method picks: lora (the default), qlora (4-bit NF4 base) or full; train.dora makes
    the adapter DoRA.

    A run killed at any point continues with --resume. Under `accelerate launch` it trains
    data-parallel on every process (DDP); nothing else changes.

    \b
    edgeft train -c examples/nl2sql/edgeft.yaml --set train.max_steps=20
    edgeft train -c examples/nl2sql/edgeft.yaml --resume
    accelerate launch --num_processes 2 -m edgeft train -c examples/nl2sql/edgeft.yaml
    """
    from edgeft.pipeline.train import train_adapter

    stage = train_adapter(_load(config_path, overrides), out, force=force, resume=resume)
    if stage is None:  # a non-main process of a distributed run
        return
    m = stage.metrics
    click.echo(f"edgeft: validation loss {m['base_val_loss']} (base) → {m['val_loss']}", err=True)
    click.echo(str(stage.path))


@cli.command()
@CONFIG_OPTION
@click.option("--train-dir", type=click.Path(path_type=Path), help="Train stage [<workdir>/<name>/train].")
@click.option("--out", type=click.Path(path_type=Path), help="Output directory [<workdir>/<name>/align].")
@FORCE_OPTION
@SET_OPTION
def align(
    config_path: Path, train_dir: Path | None, out: Path | None, force: bool, overrides: tuple[str, ...]
) -> None:
    """Tune the trained model on preference pairs (DPO, after SFT): align.pairs of the config.

    Continues the train stage's adapter (or model) with trl's DPOTrainer against a frozen copy
    of it; records reward accuracy and margin on held-out pairs, and whether they are healthy.

    \b
    edgeft align -c examples/nl2sql/edgeft-dpo.yaml
    """
    from edgeft.pipeline.align import align as align_stage

    stage = align_stage(_load(config_path, overrides), train_dir, out, force=force)
    h = stage.metrics["align"]["health"]
    click.echo(
        f"edgeft: held-out reward accuracy {h['accuracy']:.3f}, margin {h['margin']:.3g}"
        + ("" if h["healthy"] else f" (outside the healthy range: {'; '.join(h['problems'])})"),
        err=True,
    )
    click.echo(str(stage.path))


@cli.command()
@CONFIG_OPTION
@click.option(
    "--train-dir",
    type=click.Path(path_type=Path),
    help="Train or align stage [<workdir>/<name>/align with align.pairs, else <workdir>/<name>/train].",
)
@click.option("--out", type=click.Path(path_type=Path), help="Output directory [<workdir>/<name>/merge].")
@FORCE_OPTION
@SET_OPTION
def merge(
    config_path: Path, train_dir: Path | None, out: Path | None, force: bool, overrides: tuple[str, ...]
) -> None:
    """Merge the adapter into the full-precision base model (never into 4-bit weights).

    The adapter is the align stage's when the config tunes preferences (align.pairs), else the
    train stage's.

    After QLoRA, also measures merge.strategy full-precision and dequantized against the
    adapter on the 4-bit base, and records both in the manifest. After a full fine-tune
    there is nothing to merge: the trained model is taken as it is (in merge.dtype).

    \b
    edgeft merge -c examples/nl2sql/edgeft.yaml
    edgeft merge -c examples/nl2sql/edgeft.yaml --set merge.strategy=dequantized
    """
    from edgeft.pipeline.merge import merge_adapter

    click.echo(str(merge_adapter(_load(config_path, overrides), train_dir, out, force=force).path))


@cli.group()
def export() -> None:
    """Export the merged model to edge formats."""


def _export_command(fmt: str, doc: str) -> None:
    """`edgeft export <fmt>`: the edgeft.pipeline.export.<fmt> stage, which is export_<fmt>(cfg, merge_dir, out)."""

    @export.command(fmt, help=doc)
    @CONFIG_OPTION
    @click.option(
        "--merge-dir", type=click.Path(path_type=Path), help="Merge stage [<workdir>/<name>/merge]."
    )
    @click.option(
        "--out", type=click.Path(path_type=Path), help=f"Output directory [<workdir>/<name>/export-{fmt}]."
    )
    @FORCE_OPTION
    @SET_OPTION
    def command(
        config_path: Path, merge_dir: Path | None, out: Path | None, force: bool, overrides: tuple[str, ...]
    ) -> None:
        from edgeft.pipeline.export import gguf, onnx

        export = {"gguf": gguf.export_gguf, "onnx": onnx.export_onnx}[fmt]
        click.echo(str(export(_load(config_path, overrides), merge_dir, out, force=force).path))


_export_command(
    "gguf",
    """Convert with llama.cpp's converter and quantize (export.gguf.types).

    \b
    edgeft export gguf -c examples/nl2sql/edgeft.yaml --set 'export.gguf.types=[q4_k_m]'
    """,
)
_export_command(
    "onnx",
    """Export with optimum (KV cache) and quantize with ONNX Runtime (export.onnx.types).

    \b
    edgeft export onnx -c examples/nl2sql/edgeft.yaml
    """,
)


@export.command("lmstudio")
@click.argument("dist", type=click.Path(path_type=Path))
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--publisher", default="edgeft", show_default=True, help="LM Studio's publisher folder.")
@click.option("--force", is_flag=True, help="Replace GGUF files already there with other bytes.")
def export_lmstudio(dist: Path, out: Path, publisher: str, force: bool) -> None:
    """Copy a dist's GGUF files into LM Studio's layout: OUT/<publisher>/<name>/<file>.gguf.

    OUT is LM Studio's models folder (~/.lmstudio/models by default in LM Studio). Every byte is
    checked against the dist's manifest; `edgeft verify` checked each template with the
    JavaScript Jinja engine LM Studio uses too.

    \b
    edgeft export lmstudio examples/nl2sql/dist/nl2sql-tiny ~/.lmstudio/models
    """
    from edgeft.ship.publish import export_lmstudio as run_export

    for path in run_export(dist, out, publisher, force=force):
        click.echo(str(path))


@cli.command()
@click.argument("path", type=click.Path(path_type=Path), required=False)
@click.option(
    "-c",
    "--config",
    "config_path",
    type=click.Path(path_type=Path),
    help="Verify the export stages of this config (instead of PATH).",
)
@click.option(
    "--merge-dir",
    type=click.Path(path_type=Path),
    help="Reference merge stage [from PATH's manifest, or <workdir>/<name>/merge].",
)
@click.option(
    "--export-dir",
    "export_dirs",
    multiple=True,
    type=click.Path(path_type=Path),
    help="With -c: export stage to check (repeatable) [the config's export stages].",
)
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    help="Report directory [<workdir>/<name>/verify, or PATH-verify next to PATH].",
)
@click.option(
    "--check",
    "check_only",
    is_flag=True,
    help="Only check PATH's files against its manifest (fast: no runtime is loaded).",
)
@click.option(
    "--second-opinion/--no-second-opinion",
    default=None,
    help="Also measure every GGUF's KL with llama.cpp's llama-perplexity; the two must agree "
    "[verify.second_opinion of the config, or of the manifest's].",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report JSON on stdout.")
@click.option("--force", is_flag=True, help="Replace an --out directory that is not an edgeft verify report.")
def verify(
    path: Path | None,
    config_path: Path | None,
    merge_dir: Path | None,
    export_dirs: tuple[Path, ...],
    out: Path | None,
    check_only: bool,
    second_opinion: bool | None,
    as_json: bool,
    force: bool,
) -> None:
    """Compare every exported artifact with the merged model; exit 7 if any check fails.

    PATH is a dist folder or an export stage; its manifest says how it was made and where the
    reference is. Or -c CONFIG for the config's own stages. A dist's own files (manifest.json
    and every file it lists) are checked first; --check does only that.

    \b
    edgeft verify examples/nl2sql/dist/nl2sql-tiny
    edgeft verify examples/nl2sql/dist/nl2sql-tiny --check
    edgeft verify -c examples/nl2sql/edgeft.yaml
    edgeft verify -c examples/nl2sql/edgeft.yaml --second-opinion
    """
    from edgeft.core import stages
    from edgeft.core.errors import InputError, VerifyFailed
    from edgeft.pipeline.verify import verify_artifacts, verify_path

    if path is None and config_path is None:
        raise InputError("give a dist folder or export stage to verify, or -c CONFIG")
    if check_only:
        from edgeft.judge.integrity import check_path

        if path is None:
            raise InputError("--check needs a dist folder or export stage PATH")
        click.echo(check_path(path))
        return
    if path is not None:
        out_dir = out or path.with_name(path.name + "-verify")
        run = functools.partial(
            verify_path, path, merge_dir, out_dir, force=force, second_opinion=second_opinion
        )
    elif config_path is not None:
        cfg = _load(config_path)
        out_dir = stages.directory(cfg, stages.VERIFY, out)
        run = functools.partial(
            verify_artifacts,
            cfg,
            merge_dir,
            list(export_dirs) or None,
            out_dir,
            force=force,
            second_opinion=second_opinion,
        )
    try:
        stage = run()
    except VerifyFailed:
        if as_json and (out_dir / "report.json").is_file():
            click.echo((out_dir / "report.json").read_text())
        raise
    click.echo(stage.file("report.json").read_text() if as_json else str(stage.path))


@cli.command("eval")
@CONFIG_OPTION
@click.option(
    "--merge-dir",
    type=click.Path(path_type=Path),
    help="Fine-tuned model's merge stage [<workdir>/<name>/merge].",
)
@click.option(
    "--export-dir",
    "export_dirs",
    multiple=True,
    type=click.Path(path_type=Path),
    help="Export stage whose artifacts to score (repeatable) [the config's export stages].",
)
@click.option("--out", type=click.Path(path_type=Path), help="Results directory [<workdir>/<name>/eval].")
@click.option("--json", "as_json", is_flag=True, help="Print the results JSON on stdout.")
@click.option("--force", is_flag=True, help="Replace an --out directory that is not an edgeft eval result.")
@SET_OPTION
def eval_cmd(
    config_path: Path,
    merge_dir: Path | None,
    export_dirs: tuple[Path, ...],
    out: Path | None,
    as_json: bool,
    force: bool,
    overrides: tuple[str, ...],
) -> None:
    """Score base, fine-tuned model and every artifact on the held-out split; exit 8 on a regression.

    Exact match, chrF and format compliance (eval.json / eval.json_schema / eval.regex). An
    artifact fails on a metric when, on the same examples, it loses at least eval.min_discordant
    (3) that the fine-tuned model got right, the loss is significant (p < eval.alpha, 0.05) and it
    keeps less than eval.min_relative (95%) of the score.

    \b
    edgeft eval -c examples/nl2sql/edgeft.yaml
    """
    from edgeft.core import stages
    from edgeft.core.errors import EvalFailed
    from edgeft.pipeline.evaluate import evaluate

    cfg = _load(config_path, overrides)
    out_dir = stages.directory(cfg, stages.EVAL, out)
    try:
        stage = evaluate(cfg, merge_dir, list(export_dirs) or None, out_dir, force=force)
    except EvalFailed:
        if as_json and (out_dir / "results.json").is_file():
            click.echo((out_dir / "results.json").read_text())
        raise
    click.echo(stage.file("results.json").read_text() if as_json else str(stage.path))


@cli.command()
@CONFIG_OPTION
@click.option("--force", is_flag=True, help="Replace a dist_dir/<name>/ that edgeft did not write.")
def package(config_path: Path, force: bool) -> None:
    """Assemble dist/<name>/ (artifacts, verify report, eval results, model card, manifest.json).

    Every artifact byte is checked against the checksums verify recorded; an earlier dist of
    edgeft's is replaced, anything else only with --force.

    \b
    edgeft package -c examples/nl2sql/edgeft.yaml
    """
    from edgeft.ship.package import package_dist

    click.echo(str(package_dist(_load(config_path), force=force).path))


@cli.group()
def registry() -> None:
    """Versions of a model: register dists, promote, roll back, A/B split and route.

    The registry is a directory (--registry, $EDGEFT_REGISTRY, the config's `registry:` with -c,
    else ./registry) holding index.json, events.jsonl and an immutable copy of each version.

    \b
    edgeft registry add examples/nl2sql/dist/nl2sql-tiny
    edgeft registry promote nl2sql-tiny:1 --to production
    edgeft registry split nl2sql-tiny production=90 candidate=10
    edgeft registry route nl2sql-tiny --key request-42
    """


def registry_options(f):
    f = click.option(
        "-c",
        "--config",
        "config_path",
        type=click.Path(path_type=Path),
        help="Use this config's `registry:` directory.",
    )(f)
    return click.option(
        "--registry",
        "registry_dir",
        type=click.Path(path_type=Path),
        envvar="EDGEFT_REGISTRY",
        help="Registry directory [$EDGEFT_REGISTRY, the config's registry:, ./registry].",
    )(f)


def _registry(registry_dir: Path | None, config_path: Path | None) -> Registry:
    from edgeft.registry.store import Registry

    if registry_dir is None and config_path is not None:
        cfg = _load(config_path)
        registry_dir = cfg.path(cfg.registry)
    return Registry(registry_dir or Path("registry"))


REASON_OPTION = click.option("--reason", help="Why (recorded in the event log).")


@registry.command("add")
@click.argument("dist", type=click.Path(path_type=Path))
@registry_options
@REASON_OPTION
def registry_add(dist: Path, registry_dir: Path | None, config_path: Path | None, reason: str | None) -> None:
    """Register a dist (verified and evaluated) as the next version of its model; print NAME:VERSION.

    The dist's files are checked against its manifest and copied in; the same dist registered
    again is its existing version.

    \b
    edgeft registry add examples/nl2sql/dist/nl2sql-tiny --reason "6 epochs"
    """
    reg = _registry(registry_dir, config_path)
    name, number, new = reg.add(dist, reason)
    if not new:
        click.echo(f"edgeft: {dist} is already registered as {name}:{number}", err=True)
    click.echo(f"{name}:{number}")


@registry.command("list")
@registry_options
@click.option("--json", "as_json", is_flag=True, help="Print the index as JSON.")
def registry_list(registry_dir: Path | None, config_path: Path | None, as_json: bool) -> None:
    """The registered models: versions, production, candidate, split.

    \b
    edgeft registry list
    """
    from edgeft.registry.view import list_table

    reg = _registry(registry_dir, config_path)
    index = reg.index()
    click.echo(json.dumps(index.to_json(), indent=2, ensure_ascii=False) if as_json else list_table(index))


@registry.command("show")
@click.argument("ref")
@click.option(
    "--against", help="Compare with this version (NAME:VERSION or NAME@ALIAS) [production, else its parent]."
)
@click.option(
    "--served",
    type=click.Path(path_type=Path, exists=True, file_okay=False),
    multiple=True,
    help="An `edgeft serve` log folder (repeatable): compare the users' ratings, paired by request key.",
)
@registry_options
@click.option("--json", "as_json", is_flag=True, help="Print the version (and the comparison) as JSON.")
def registry_show(
    ref: str,
    against: str | None,
    served: tuple[Path, ...],
    registry_dir: Path | None,
    config_path: Path | None,
    as_json: bool,
) -> None:
    """A model's versions (NAME), or one version (NAME:VERSION, NAME@ALIAS) with its lineage,
    artifacts, and verify and eval compared with another version.

    \b
    edgeft registry show nl2sql-tiny
    edgeft registry show nl2sql-tiny:2 --against nl2sql-tiny:1
    edgeft registry show nl2sql-tiny:2 --against nl2sql-tiny:1 --served served
    """
    from edgeft.registry.routing import Ref
    from edgeft.registry.view import show

    click.echo(
        show(
            _registry(registry_dir, config_path),
            Ref.parse(ref),
            Ref.parse(against) if against else None,
            as_json,
            list(served),
        )
    )


@registry.command("promote")
@click.argument("ref")
@click.option(
    "--to", "to", type=click.Choice(["production", "candidate"]), default="production", show_default=True
)
@click.option("--force", is_flag=True, help="Promote even if it is worse than production (needs --reason).")
@REASON_OPTION
@registry_options
def registry_promote(
    ref: str, to: str, force: bool, reason: str | None, registry_dir: Path | None, config_path: Path | None
) -> None:
    """Make a version production (the previous one is archived) or the candidate.

    Production requires that the version passed verify and eval and scores at least as well as
    the current production version on every eval metric both share; exit 11 otherwise. A split
    in progress ends when production changes.

    \b
    edgeft registry promote nl2sql-tiny:2 --to production
    edgeft registry promote nl2sql-tiny:3 --force --reason "format fix outweighs -1 answer"
    """
    from edgeft.registry.routing import Ref

    result = _registry(registry_dir, config_path).promote(Ref.parse(ref), to, force=force, reason=reason)
    name = Ref.parse(ref).name
    if result.get("previous") is not None:
        click.echo(f"edgeft: {name}:{result['previous']} archived", err=True)
    if result.get("regressions"):
        click.echo(f"edgeft: promoted despite: {'; '.join(result['regressions'])}", err=True)
    click.echo(f"{name}:{result['version']} {to}")


@registry.command("rollback")
@click.argument("name")
@REASON_OPTION
@registry_options
def registry_rollback(
    name: str, reason: str | None, registry_dir: Path | None, config_path: Path | None
) -> None:
    """Production goes back to the version that was production before (the current one is archived).

    \b
    edgeft registry rollback nl2sql-tiny --reason "latency regression"
    """
    current, previous = _registry(registry_dir, config_path).rollback(name, reason)
    click.echo(f"edgeft: {name}:{current} archived", err=True)
    click.echo(f"{name}:{previous} production")


@registry.command("archive")
@click.argument("ref")
@REASON_OPTION
@registry_options
def registry_archive(
    ref: str, reason: str | None, registry_dir: Path | None, config_path: Path | None
) -> None:
    """Retire a version that is not production and serves no split (its files stay).

    \b
    edgeft registry archive nl2sql-tiny:1
    """
    from edgeft.registry.routing import Ref

    number = _registry(registry_dir, config_path).archive(Ref.parse(ref), reason)
    click.echo(f"{Ref.parse(ref).name}:{number} archived")


@registry.command("split")
@click.argument("name")
@click.argument("arms", nargs=-1, metavar="LABEL=PERCENT...")
@click.option("--off", is_flag=True, help="End the split (all traffic to production).")
@REASON_OPTION
@registry_options
def registry_split(
    name: str,
    arms: tuple[str, ...],
    off: bool,
    reason: str | None,
    registry_dir: Path | None,
    config_path: Path | None,
) -> None:
    """Split traffic between versions: LABEL is an alias (production, candidate) or a version.

    Percentages add up to 100 (steps of 0.01). Changing only the weights keeps the split id, so
    keys already on the candidate stay there when it grows; put production first.

    \b
    edgeft registry split nl2sql-tiny production=90 candidate=10
    edgeft registry split nl2sql-tiny production=80 candidate=20
    edgeft registry split nl2sql-tiny --off
    """
    from edgeft.core.errors import InputError

    if off == bool(arms):
        raise InputError("give LABEL=PERCENT arms (e.g. production=90 candidate=10), or --off")
    split = _registry(registry_dir, config_path).split(name, list(arms), reason)
    if split is None:
        click.echo(f"{name}: no split (all traffic to production)")
    else:
        click.echo(
            f"{name}: split {split.id}: "
            + ", ".join(f"{a.label} ({name}:{a.version}) {a.weight / 100:g}%" for a in split.arms)
        )


@registry.command("route")
@click.argument("name")
@click.option(
    "--key", "keys", multiple=True, required=True, help="Request key (repeatable), e.g. a request id."
)
@registry_options
@click.option("--json", "as_json", is_flag=True, help="One JSON object per key.")
def registry_route(
    name: str, keys: tuple[str, ...], registry_dir: Path | None, config_path: Path | None, as_json: bool
) -> None:
    """Which version serves each request key (the split's assignment, else production).

    \b
    edgeft registry route nl2sql-tiny --key request-42
    """
    reg = _registry(registry_dir, config_path)
    index = reg.index()
    checked: set[int] = set()
    for key in keys:
        r = reg.route(name, key, index)
        if r["version"] not in checked:  # a version is named only when its files are the registered ones
            reg.check(name, index.models[name].versions[r["version"]], "routed to")
            checked.add(r["version"])
        click.echo(
            json.dumps({"key": key, **r}, ensure_ascii=False)
            if as_json
            else f"{key}\t{name}:{r['version']}\t{r['label']}"
        )


@registry.command("export")
@click.argument("ref")
@click.argument("out", type=click.Path(path_type=Path))
@FORCE_OPTION
@registry_options
def registry_export(
    ref: str, out: Path, force: bool, registry_dir: Path | None, config_path: Path | None
) -> None:
    """Copy a version out as a plain dist (checked byte for byte; `edgeft verify OUT --check` passes).

    \b
    edgeft registry export nl2sql-tiny@production deploy/nl2sql-tiny
    """
    from edgeft.registry.routing import Ref

    path, number = _registry(registry_dir, config_path).export(Ref.parse(ref), out, force=force)
    click.echo(f"edgeft: {Ref.parse(ref).name}:{number} exported", err=True)
    click.echo(str(path))


@registry.command("log")
@click.argument("name", required=False)
@registry_options
@click.option("--json", "as_json", is_flag=True, help="The events as JSON lines.")
def registry_log(
    name: str | None, registry_dir: Path | None, config_path: Path | None, as_json: bool
) -> None:
    """The event log (register, promote, archive, rollback, split), oldest first.

    \b
    edgeft registry log nl2sql-tiny
    """
    from edgeft.registry.view import event_line

    for event in _registry(registry_dir, config_path).events(name):
        click.echo(json.dumps(event, ensure_ascii=False) if as_json else event_line(event))


SAMPLING_OPTIONS = [
    click.option(
        "--type", "artifact_type", help="Artifact in a dist folder (e.g. q4_k_m, onnx-int8) [its first GGUF]."
    ),
    click.option("--max-tokens", default=256, show_default=True, help="Most tokens to generate."),
    click.option("--temperature", default=Sampling.temperature, show_default=True, help="0 = greedy."),
    click.option(
        "--top-k", default=Sampling.top_k, show_default=True, help="Keep the k most likely tokens (0 = all)."
    ),
    click.option("--top-p", default=Sampling.top_p, show_default=True, help="Nucleus sampling threshold."),
    click.option("--seed", default=Sampling.seed, show_default=True, help="Sampling seed."),
    click.option("--system", help="A system message."),
]


def sampling_options(f):
    for option in reversed(SAMPLING_OPTIONS):
        f = option(f)
    return f


@cli.command()
@click.argument("artifact", type=click.Path(path_type=Path))
@click.argument("prompt")
@sampling_options
@click.option("--json", "as_json", is_flag=True, help="Print text, token counts and tokens/s as JSON.")
@click.option(
    "--tools",
    "tools_file",
    type=click.Path(path_type=Path),
    help="Offer these tools (a model trained on tool rows): an OpenAI `tools` JSON array, or a dist's "
    "java/tools.jsonl. With --json the answer's calls are listed.",
)
def run(
    artifact: Path,
    prompt: str,
    artifact_type: str | None,
    max_tokens: int,
    temperature: float,
    top_k: int,
    top_p: float,
    seed: int,
    system: str | None,
    as_json: bool,
    tools_file: Path | None,
) -> None:
    """Answer one prompt with an exported artifact (GGUF file, ONNX folder or dist folder).

    Uses the artifact's own chat template and stops at its end-of-turn token. Offline.

    \b
    edgeft run examples/nl2sql/dist/nl2sql-tiny "How many employees work in Oslo?"
    edgeft run model-q4_k_m.gguf "Hello" --temperature 0.7 --json
    edgeft run examples/orders-smollm2/dist/orders-smollm2 "Where is A-1042?" \\
      --tools examples/orders-smollm2/dist/orders-smollm2/java/tools.jsonl --json
    """
    from edgeft.cli.run import open_runtime, read_tools, respond

    messages = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": prompt}
    ]
    offered = read_tools(tools_file) if tools_file else None
    if offered:
        from edgeft.data.tools import with_tools

        messages = with_tools(messages, offered)
    with open_runtime(artifact, artifact_type) as rt:
        stream = None if as_json else (lambda text: click.echo(text, nl=False))
        reply = respond(rt, messages, max_tokens, Sampling(temperature, top_k, top_p, seed), stream)
    out = reply.to_dict()
    if offered:
        from edgeft.data.tools import parse

        out["tool_calls"] = [{"name": c.name, "arguments": c.arguments} for c in parse(reply.text).calls]
    click.echo(json.dumps(out, ensure_ascii=False) if as_json else "")


@cli.command()
@click.argument("artifact", type=click.Path(path_type=Path))
@sampling_options
def chat(
    artifact: Path,
    artifact_type: str | None,
    max_tokens: int,
    temperature: float,
    top_k: int,
    top_p: float,
    seed: int,
    system: str | None,
) -> None:
    """Chat with an exported artifact, streaming replies (/reset clears, /exit or Ctrl-D quits).

    \b
    edgeft chat examples/nl2sql/dist/nl2sql-tiny --type q8_0
    """
    from edgeft.cli.run import open_runtime, respond
    from edgeft.core.errors import InputError

    sampling = Sampling(temperature, top_k, top_p, seed)
    start = [{"role": "system", "content": system}] if system else []
    messages = list(start)
    with open_runtime(artifact, artifact_type) as rt:
        click.echo(f"edgeft: chatting with {artifact} in {rt.name}; /reset clears, /exit quits", err=True)
        while True:
            try:
                line = input("> ")
            except EOFError:
                break
            if line.strip() in ("/exit", "/quit"):
                break
            if line.strip() == "/reset":
                messages = list(start)
                continue
            if not line.strip():
                continue
            messages.append({"role": "user", "content": line})
            try:
                reply = respond(rt, messages, max_tokens, sampling, lambda text: click.echo(text, nl=False))
            except InputError as e:  # the conversation no longer fits the context: say so, keep chatting
                messages.pop()
                click.echo(f"Error: {e}", err=True)
                continue
            click.echo("")
            messages.append({"role": "assistant", "content": reply.text})


@cli.command("check-model")
@click.argument("base")
@click.option(
    "-c",
    "--config",
    "config_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Also say which answers this config's exports need (exit 3 when one is no).",
)
@click.option("--json", "as_json", is_flag=True, help="The answers as JSON.")
def check_model(base: str, config_path: Path | None, as_json: bool) -> None:
    """Will every consumer load BASE? Asks the pinned tools: llama.cpp's converter and runtime,
    each GGUF type's blocks, optimum-onnx, onnxruntime-genai's builder, the JS Jinja engine.

    BASE is what base_model takes: a model directory, a hub id, tiny:<size>, gemma3:270m, …

    \b
    edgeft check-model gemma3:270m
    edgeft check-model tiny:micro -c edgeft.yaml
    """
    from edgeft.cli import preflight
    from edgeft.models.base import resolve_base

    cfg = _load(config_path) if config_path else None
    model_dir = Path(
        resolve_base(base, cfg.root if cfg else Path.cwd(), cfg.trust_remote_code if cfg else False)
    )
    answers = preflight.check(model_dir, cfg)
    click.echo(json.dumps(preflight.as_json(answers), indent=2) if as_json else preflight.table(answers))
    if cfg is not None:
        preflight.require(answers)


@cli.command("tiny-model")
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--size", type=click.Choice(["micro", "small"]), default="micro", show_default=True)
@click.option("--seed", default=0, show_default=True, help="Same seed, same files.")
@click.option(
    "--tokenizer",
    type=click.Choice(["spm", "bpe", "qwen2"]),
    default="spm",
    show_default=True,
    help="SentencePiece, byte-level BPE (GPT-2 style), or a Qwen2 model with Qwen's tokens.",
)
@FORCE_OPTION
def tiny_model(out: Path, size: str, seed: int, tokenizer: str, force: bool) -> None:
    """Build a small pre-trained Llama model directory (no hub needed).

    \b
    edgeft tiny-model models/tiny-small --size small --seed 0
    """
    from edgeft.models.tiny import build_tiny_model

    def progress(step: int, total: int, loss: float) -> None:
        if step % 50 == 0 or step == total:
            click.echo(f"edgeft: pre-training step {step}/{total}, loss {loss:.3f}", err=True)

    click.echo(str(build_tiny_model(out, size, seed, force=force, progress=progress, tokenizer=tokenizer)))


def _add_serve() -> None:
    from edgeft.cli.serve import serve

    cli.add_command(serve)


_add_serve()


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
