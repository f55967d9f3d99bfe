"""`edgeft serve`: verified models behind an OpenAI-compatible endpoint (edgeft/serve/)."""

from __future__ import annotations

import ipaddress
import logging
import os
from pathlib import Path

import click

from edgeft.core.errors import InputError

LOOPBACK = "127.0.0.1"


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def split_targets(
    targets: tuple[str, ...], registry_dir: Path | None
) -> tuple[list[Path], dict[Path, set[str] | None]]:
    """Dist folders, registry folders (every model) and model names (in --registry)."""
    from edgeft.registry.routing import Ref

    dists: list[Path] = []
    registries: dict[Path, set[str] | None] = {}
    for target in targets:
        path = Path(target)
        if (path / "manifest.json").is_file():
            dists.append(path)
        elif (path / "index.json").is_file():
            registries[path] = None
        elif path.exists() or "/" in target:
            raise InputError(
                f"{target}: neither a dist folder (manifest.json) nor a registry (index.json); "
                f"pass a dist, a registry folder, or a registered model name with --registry"
            )
        else:
            root = registry_dir or Path(os.environ.get("EDGEFT_REGISTRY", "registry"))
            names = registries.setdefault(root, set())
            if names is not None:
                names.add(Ref.parse(target).name)
    return dists, registries


@click.command("serve")
@click.argument("targets", nargs=-1, required=True)
@click.option(
    "--registry",
    "registry_dir",
    type=click.Path(path_type=Path),
    envvar="EDGEFT_REGISTRY",
    help="Registry holding the named models [$EDGEFT_REGISTRY, ./registry].",
)
@click.option("--host", default=LOOPBACK, show_default=True, help="Address to listen on.")
@click.option("--port", default=8080, show_default=True, help="Port (0: any free one, printed).")
@click.option(
    "--api-key",
    envvar="EDGEFT_API_KEY",
    help="Require `Authorization: Bearer KEY` [$EDGEFT_API_KEY]; needed off loopback.",
)
@click.option("--type", "artifact_type", help="GGUF type to serve (e.g. q8_0) [the dist's recommended GGUF].")
@click.option("--slots", default=4, show_default=True, help="Requests generated at once per version.")
@click.option("--queue", default=16, show_default=True, help="Requests waiting per version before 429.")
@click.option("--context", type=int, help="Tokens per request (prompt + reply) [the model's, at most 8192].")
@click.option("--threads", type=int, help="CPU threads per version [llama.cpp's default].")
@click.option(
    "--prompt-cache",
    is_flag=True,
    help="Reuse a slot's cached prompt prefix: faster multi-turn chats, but greedy answers may then "
    "depend on the request before (off: each answer is `edgeft run`'s).",
)
@click.option(
    "--flash-attn",
    is_flag=True,
    help="llama.cpp's flash attention: faster (1.18-1.3x throughput measured on 2 cores), but not the "
    "summation order verify and `edgeft run` use, so near-tie greedy choices may differ.",
)
@click.option(
    "--log-dir",
    type=click.Path(path_type=Path),
    default=Path("served"),
    show_default=True,
    help="Where completions and feedback are logged (JSONL).",
)
@click.option("--log-max-mb", default=100, show_default=True, help="Rotate the log at this size.")
@click.option(
    "--no-log-content", is_flag=True, help="Log no prompts or replies (ids, versions, counts only)."
)
@click.option("--max-body-kb", default=1024, show_default=True, help="Largest request body.")
@click.option("--drain", default=30, show_default=True, help="Seconds in-flight requests get on Ctrl-C.")
def serve(
    targets: tuple[str, ...],
    registry_dir: Path | None,
    host: str,
    port: int,
    api_key: str | None,
    artifact_type: str | None,
    slots: int,
    queue: int,
    context: int | None,
    threads: int | None,
    prompt_cache: bool,
    flash_attn: bool,
    log_dir: Path,
    log_max_mb: int,
    no_log_content: bool,
    max_body_kb: int,
    drain: int,
) -> None:
    """Serve dists or registered models on an OpenAI-compatible endpoint.

    TARGETS: dist folders, registry folders, or model names in --registry (`NAME` follows the
    registry's production version and A/B split; `NAME:N` and `NAME@ALIAS` are servable too).
    Only bytes whose sha256 is the verified one are served. Ctrl-C drains, then exits.

    \b
    edgeft serve examples/nl2sql/dist/nl2sql-tiny
    edgeft serve nl2sql-tiny --registry registry --port 8080
    """
    from edgeft.core.workdir import lock
    from edgeft.serve import journal
    from edgeft.serve.app import Limits, Service, bind, runtime_dir, serve_forever
    from edgeft.serve.catalog import Catalog
    from edgeft.serve.engine import Engine, Servable

    if not _loopback(host) and not api_key:
        raise InputError(
            f"--host {host} is reachable from other machines: set --api-key (or $EDGEFT_API_KEY), "
            f"or keep the default --host {LOOPBACK}"
        )
    for name, value, low in (
        ("--slots", slots, 1),
        ("--queue", queue, 0),
        ("--log-max-mb", log_max_mb, 1),
        ("--max-body-kb", max_body_kb, 1),
    ):
        if value < low:
            raise InputError(f"{name} must be at least {low}")
    if context is not None and context < 16:
        raise InputError("--context must be at least 16 tokens")
    dists, registries = split_targets(targets, registry_dir)
    sockets: list[Path] = []  # made once the log folder is held

    def make_engine(servable: Servable) -> Engine:
        return Engine(
            servable,
            sockets[0],
            log_dir / "engines",
            slots=slots,
            context=context,
            threads=threads,
            queue=queue,
            prompt_cache=prompt_cache,
            flash_attention=flash_attn,
        )

    catalog = Catalog(dists, registries, artifact_type, make_engine)
    for servable in catalog.needed():  # refuse bytes that are not the verified ones, before anything
        Engine.check_bytes(servable)
    journal.prepare(log_dir)
    with lock(log_dir, lock_file=".serve.lock"):
        sockets.append(runtime_dir())
        sock = bind(host, port)
        service = Service(
            catalog,
            journal.Journal(log_dir, log_max_mb << 20, content=not no_log_content),
            Limits(max_body=max_body_kb << 10, api_key=api_key),
        )
        logging.getLogger("edgeft.serve").setLevel(logging.INFO)

        def announce(url: str) -> None:
            click.echo(
                f"edgeft: serving {', '.join(catalog.model_ids())} on {url}/v1 (log: {log_dir})", err=True
            )

        try:
            serve_forever(service, sock, drain, announce)
        finally:
            import shutil

            shutil.rmtree(sockets[0], ignore_errors=True)
    click.echo("edgeft: stopped", err=True)
