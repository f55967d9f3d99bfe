"""The README and docs/ tell the truth about the code: exit codes, config keys and defaults, the
bands, links that lead somewhere, and a README that stays a front door."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from edgeft.core.config import Config
from edgeft.core.errors import EXIT_CODES

REPO = Path(__file__).resolve().parent.parent
README = (REPO / "README.md").read_text()
PAGES = {p: p.read_text() for p in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]}


def _section(title: str) -> str:
    """The section titled `title` (a `## ` heading) in the README or docs/, whichever has it."""
    found = [
        text.split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]
        for text in PAGES.values()
        if f"\n## {title}\n" in text
    ]
    assert len(found) == 1, f"{len(found)} sections titled {title!r}"
    return found[0]


def test_exit_code_table_is_the_code_s() -> None:
    rows = re.findall(r"^\| (\d+) \| (.+) \|$", _section("Exit codes"), re.MULTILINE)
    assert {int(code): meaning for code, meaning in rows} == EXIT_CODES


def _keys(cls: type, prefix: str = "") -> list[str]:
    out = []
    for f in dataclasses.fields(cls):
        if f.name == "source":
            continue
        if dataclasses.is_dataclass(f.type) or (isinstance(f.type, str) and f.type.endswith("Config")):
            sub = {
                "data": "DataConfig",
                "augment": "AugmentConfig",
                "train": "TrainConfig",
                "align": "AlignConfig",
                "merge": "MergeConfig",
                "export": "ExportConfig",
                "verify": "VerifyConfig",
                "eval": "EvalConfig",
                "gguf": "GGUFConfig",
                "onnx": "ONNXConfig",
            }
            import edgeft.core.config as config_module

            out += _keys(getattr(config_module, sub[f.name]), f"{prefix}{f.name}.")
        else:
            out.append(prefix + f.name)
    return out


def _slashed(table: str, first: str, sep: str) -> set[str]:
    """The names a table's rows list as "`train.lora_r` / `lora_alpha`" or "`edgeft registry list`
    / `show`": each later name completes the first one's prefix (up to its last `sep`)."""
    out = set()
    for head, rest in re.findall(rf"^\| `({first})`((?: / `[a-z_]+`)+)", table, re.MULTILINE):
        prefix = head.rsplit(sep, 1)[0]
        out |= {f"{prefix}{sep}{name}" for name in re.findall(r"`([a-z_]+)`", rest)}
    return out


def test_every_config_key_is_in_the_reference() -> None:
    reference = _section("Config reference")
    documented = set(re.findall(r"`([a-z_.]+)`", reference)) | _slashed(reference, r"[a-z_]+\.[a-z_]+", ".")
    missing = [k for k in _keys(Config) if k not in documented]
    assert not missing, f"config keys missing from docs/config.md: {missing}"


def test_no_link_leaves_the_repository() -> None:
    for text in PAGES.values():
        assert "../shared" not in text and "DESIGN.md" not in text


def _slug(heading: str) -> str:  # GitHub's anchor for a heading
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_every_link_in_the_docs_leads_to_a_file_and_heading_that_exist() -> None:
    broken = []
    for page, text in PAGES.items():
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", target):  # https:, mailto:
                continue
            path, _, anchor = target.partition("#")
            linked = (page.parent / path).resolve() if path else page
            if not linked.exists():
                broken.append(f"{page.name}: {target} (no such file)")
            elif (
                anchor
                and linked.suffix == ".md"
                and anchor not in {_slug(h) for h in re.findall(r"(?m)^#+ (.+)$", linked.read_text())}
            ):
                broken.append(f"{page.name}: {target} (no such heading)")
    assert not broken, broken


def test_the_readme_is_a_front_door() -> None:
    """What it is, the two set-up commands, a quick start, the commands, the figures, links: the
    manual lives in docs/."""
    assert len(README.splitlines()) <= 200
    assert "scripts/setup.sh && .venv/bin/edgeft build -c examples/nl2sql/edgeft.yaml" in README
    ci = (REPO / ".ci" / "run").read_text().strip().splitlines()[-1]
    assert (
        ci.startswith("scripts/setup.sh && .venv/bin/python -m pytest") and ci in README
    )  # CI runs the README's
    linked = set(re.findall(r"\(docs/([a-z-]+\.md)", README))
    assert linked == {p.name for p in (REPO / "docs").glob("*.md")}  # every page is reachable


def _default(cls: type, dotted: str):  # the dataclass default of a dotted config key
    obj = cls()
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def test_config_reference_defaults_are_the_code_s() -> None:
    import yaml

    rows = re.findall(
        r"^\| `([a-z_.]+)`((?: / `[a-z_]+`)*) \| (.+?) \| .+ \|$", _section("Config reference"), re.MULTILINE
    )
    assert len(rows) > 40
    checked = 0
    for key, more, default in rows:
        keys = [key] + [f"{key.rsplit('.', 1)[0]}.{k}" for k in re.findall(r"`([a-z_]+)`", more)]
        cells = [c.strip() for c in default.split(" / ")]
        for k, cell in zip(keys, cells, strict=True):
            want = _default(Config, k)
            if cell == "required":
                assert want == "", k
            elif cell == "none":
                assert want is None, k
            else:
                assert cell.startswith("`") and cell.endswith("`"), f"{k}: {cell}"
                said = yaml.safe_load(cell.strip("`"))
                assert said == want or (isinstance(want, str) and str(said) == want), (
                    f"{k}: README {cell}, code {want!r}"
                )
            checked += 1
    assert checked == len(_keys(Config))


def test_type_lists_and_bands_are_the_table_s() -> None:
    from edgeft.core import formats, stages
    from edgeft.core.config import GGUF_TYPES

    reference = _section("Config reference")
    listed = re.search(r"\| `export.gguf.types` \| .+? \| any of `([a-z0-9_ ]+)`", reference).group(1).split()
    assert listed == list(GGUF_TYPES)
    workdir = re.search(r"<workdir>/<name>/\{([a-z,-]+)\}", reference).group(1).split(",")
    assert workdir == [k for k in stages.ORDER if k != stages.DIST]
    gate = _section("The parity gate")
    rows = re.findall(
        r"^\| (GGUF|ONNX|ORT GenAI) ([a-z0-9_]+)( base \+ LoRA GGUF)?[^|]* \| ([0-9.e-]+) \| "
        r"([0-9.e-]+) \| ([0-9.e-]+) \| ([0-9.e-]+) \|",
        gate,
        re.MULTILINE,
    )
    fmt = {"GGUF": "gguf", "ONNX": "onnx", "ORT GenAI": "onnx-genai"}
    rows = [("gguf-lora" if lora else fmt[f], t, *limits) for f, t, lora, *limits in rows]
    assert {(f, t) for f, t, *_ in rows} == {("gguf", t) for t in formats.GGUF_TYPES} | {
        ("gguf-lora", "f16")
    } | {(o.format, t) for t, o in formats.ONNX_TYPES.items()}
    for f, t, *limits in rows:
        band = formats.band(f, t)
        assert [float(x) for x in limits] == [band.kl_mean, band.kl_p99, band.top1, band.gen_prefix], (
            f"{f} {t}"
        )


def test_every_command_is_in_the_commands_table() -> None:
    from edgeft.cli import cli

    def names(group, prefix: str = "edgeft") -> list[str]:
        out = []
        for name, command in group.commands.items():
            if getattr(command, "hidden", False):
                continue
            out += (
                names(command, f"{prefix} {name}") if hasattr(command, "commands") else [f"{prefix} {name}"]
            )
        return out

    table = _section("Commands")
    listed = set(re.findall(r"`(edgeft [a-z -]+?)`", table)) | _slashed(table, r"edgeft [a-z]+ [a-z]+", " ")
    missing = [n for n in names(cli) if n not in listed]
    assert not missing, f"commands missing from the README's table: {missing}"


def test_the_layout_table_names_every_module() -> None:
    from test_layers import LAYERS

    table = _section("Working on edgeft").split("Where things are decided", 1)[0]
    rows = re.findall(r"^\| `([a-z]+)/` \|[^|]*\|(.*)\|$", table, re.M)
    assert [folder for folder, _ in rows] == LAYERS, (
        "the table's folders, lowest first, as tests/test_layers.py has them"
    )
    named = {f"{folder}/{m}" for folder, cell in rows for m in re.findall(r"`([a-z_/]+\.py)`", cell)}
    named |= set(re.findall(r"`edgeft/([a-z_]+\.py)`", table))
    modules = {p.relative_to(REPO / "edgeft").as_posix() for p in (REPO / "edgeft").rglob("*.py")}
    assert named == modules, (sorted(modules - named), sorted(named - modules))


def test_every_documented_edgeft_command_line_names_real_commands_and_options() -> None:
    """Each `edgeft …` command line in the README and docs/ resolves to a command of the CLI, and
    every --option it shows is one of that command's (docs that show a renamed option fail here)."""
    import click

    from edgeft.cli import cli

    pages = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
    spans = [
        (p.name, s) for p in pages for s in re.findall(r"`(edgeft [^`]+)`", p.read_text(encoding="utf-8"))
    ]
    blocks = [
        (p.name, line.strip())
        for p in pages
        for block in re.findall(r"```(?:bash|sh)?\n(.*?)```", p.read_text(encoding="utf-8"), re.S)
        for line in block.splitlines()
        if re.match(r"\s*(\.venv/bin/)?edgeft ", line)
    ]
    wrong = []
    for page, text in spans + blocks:
        words = text.split("#")[0].split()
        words = words[words.index(next(w for w in words if w.endswith("edgeft"))) + 1 :]
        command: click.Command = cli
        while isinstance(command, click.Group) and words and words[0] in command.commands:
            command = command.commands[words.pop(0)]
        if isinstance(command, click.Group) and words and not words[0].startswith("-"):
            if words[0].isupper() or words[0] in ("…", "..."):
                continue  # a placeholder (`edgeft COMMAND --help`)
            wrong.append(f"{page}: `{text}`: no command {words[0]!r}")
            continue
        options = {o for p in command.params for o in (*p.opts, *p.secondary_opts)} | {"--help"}
        wrong += [
            f"{page}: `{text}`: {command.name} has no option {w.split('=')[0]}"
            for w in words
            if w.startswith("--") and w.split("=")[0] not in options
        ]
    assert len(spans) + len(blocks) > 20  # the docs do show command lines
    assert not wrong, wrong
