"""`edgeft serve`: the OpenAI protocol checks, the served log and the registry routing (fast), and
the server itself on the micro model's real build (slow): the official `openai` client streaming
and not, JSON-schema output, errors, the served greedy answer equal to `edgeft run`'s for the
verify probes, a 90/10 split over 10,000 keys, a promotion during traffic, overload, a client that
disconnects, kill -9 and Ctrl-C. Every server binds 127.0.0.1 on a free port; every load loop is
bounded in count and time."""

from __future__ import annotations

import json
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from click.testing import CliRunner
from test_registry import make_dist

from edgeft.cli import cli
from edgeft.core.errors import InputError
from edgeft.data import served
from edgeft.registry.routing import Ref
from edgeft.registry.store import Registry
from edgeft.serve import journal
from edgeft.serve.catalog import Catalog
from edgeft.serve.protocol import ApiError, parse_chat

Q = [{"role": "user", "content": "How many employees work in Oslo?"}]


# ---- the protocol (fast) ------------------------------------------------------------------------


def test_the_request_bodies_real_clients_send_are_accepted() -> None:
    # LangChain4j's OpenAiChatModel (non-null fields only), streaming with include_usage
    lc4j = {
        "model": "m",
        "messages": [{"role": "system", "content": "SQL only."}, {"role": "user", "content": "hi"}],
        "temperature": 0.0,
        "max_completion_tokens": 32,
        "stream": True,
        "stream_options": {"include_usage": True},
        "response_format": {"type": "json_object"},
    }
    r = parse_chat(lc4j)
    assert (r.max_tokens, r.stream, r.include_usage, r.json_schema) == (32, True, True, {"type": "object"})
    # Spring AI's ChatClient: explicit neutral values and nulls, the developer role, text parts
    spring = {
        "model": "m",
        "messages": [
            {"role": "developer", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
        ],
        "max_tokens": 10,
        "presence_penalty": 0.0,
        "frequency_penalty": 0,
        "logprobs": False,
        "n": 1,
        "stop": ["\n\n"],
        "seed": 7,
        "top_p": 0.9,
        "tools": None,
        "user": "alice",
        "parallel_tool_calls": True,
        "store": False,
    }
    r = parse_chat(spring)
    assert r.messages == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "ab"}]
    assert (r.max_tokens, r.stop, r.seed, r.top_p, r.user) == (10, ["\n\n"], 7, 0.9, "alice")
    schema = {"type": "object", "properties": {"sql": {"type": "string"}}, "required": ["sql"]}
    r = parse_chat(
        {
            "model": "m",
            "messages": Q,
            "response_format": {"type": "json_schema", "json_schema": {"name": "q", "schema": schema}},
        }
    )
    assert r.json_schema == schema


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"temperatur": 0}, "temperatur"),
        ({"n": 2}, "n"),
        ({"functions": [{"name": "f"}]}, "functions"),
        ({"tools": [{"type": "function", "function": {"name": "f g"}}]}, "tools[0].function.name"),
        ({"logprobs": True}, "logprobs"),
        ({"temperature": 3}, "temperature"),
        ({"temperature": "hot"}, "temperature"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": 5, "max_completion_tokens": 6}, "max_tokens"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"stop": [""]}, "stop"),
        ({"response_format": {"type": "yaml"}}, "response_format.type"),
        ({"stream_options": {"include_usage": True, "x": 1}}, "stream_options"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "robot", "content": "x"}]}, "messages[0].role"),
        ({"messages": [{"role": "tool", "content": "x", "tool_call_id": "1"}]}, "messages[0]"),
        (
            {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
            "messages[0].content[0]",
        ),
        ({"model": ""}, "model"),
    ],
)
def test_what_is_not_supported_is_a_400_naming_the_field(body: dict, param: str) -> None:
    with pytest.raises(ApiError) as e:
        parse_chat({"model": "m", "messages": Q, **body})
    assert e.value.status == 400 and e.value.param == param
    assert e.value.body()["error"]["param"] == param and e.value.message.startswith(param)


# ---- the served log (fast) ----------------------------------------------------------------------


def test_the_log_rotates_joins_feedback_and_skips_a_cut_line(tmp_path: Path) -> None:
    folder = tmp_path / "served"
    journal.prepare(folder)
    log = journal.Journal(folder, max_bytes=600)
    for i in range(6):
        log.completion({"id": f"chatcmpl-{i}", "version": "m:1", "messages": Q, "reply": "x" * 100})
    log.feedback("chatcmpl-2", 5, "SELECT 1;")
    log.feedback("chatcmpl-3", 2, None)
    log.feedback("chatcmpl-elsewhere", 4, None)  # answered by another replica: not joined
    log.close()
    assert len(served.files(folder)) >= 2  # rotated
    with (folder / served.CURRENT).open("ab") as f:  # a server killed mid-write
        f.write(b'{"type":"completion","id":"chatcmpl-cut","rep')
    rows = {r["id"]: r for r in served.completions_with_feedback(folder)}
    assert sorted(rows) == [f"chatcmpl-{i}" for i in range(6)]
    assert (rows["chatcmpl-2"]["rating"], rows["chatcmpl-2"]["correction"]) == (5, "SELECT 1;")
    assert rows["chatcmpl-3"]["rating"] == 2 and "rating" not in rows["chatcmpl-0"]
    private = journal.Journal(folder, 1 << 20, content=False)
    private.completion({"id": "chatcmpl-p", "messages": Q, "reply": "secret"})
    private.close()
    assert "secret" not in (folder / served.CURRENT).read_text()
    # a folder that is not edgeft's is never written into
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(Exception, match="not an edgeft serve log folder"):
        journal.prepare(tmp_path / "mine")


def test_the_served_log_is_a_data_source_with_its_feedback(tmp_path: Path) -> None:
    folder = tmp_path / "served"
    journal.prepare(folder)
    log = journal.Journal(folder, 1 << 20)
    for i in range(15):
        log.completion(
            {
                "id": f"chatcmpl-{i}",
                "version": "m:2" if i % 5 == 0 else "m:1",
                "variant": "production",
                "status": "ok" if i != 14 else "disconnected",
                "messages": [{"role": "user", "content": f"How many employees work in office {i}?"}],
                "reply": f"SELECT {i};",
            }
        )
        if i % 3:
            log.feedback(f"chatcmpl-{i}", 5, "SELECT fixed;" if i == 4 else None)
        elif i:
            log.feedback(f"chatcmpl-{i}", 2, None)
    log.close()
    r = CliRunner().invoke(cli, ["data", "check", str(folder), "--filter", "rating >= 4"])
    # 14 answered in full (one disconnected); rated >= 4: i % 3 != 0 among 0..13 → 9 rows
    assert "kept 9 of 14 rows" in r.output, r.output
    rows = [row for _, row in served.rows(folder)]
    fixed = next(row for row in rows if row["id"] == "chatcmpl-4")
    assert (
        fixed["messages"][-1]["content"] == "SELECT fixed;"
        and fixed["corrected"]
        and fixed["reply"] == "SELECT 4;"
    )
    assert "rating" not in next(row for row in rows if row["id"] == "chatcmpl-0")


def test_a_hand_edited_log_line_is_an_error_naming_it(tmp_path: Path) -> None:
    journal.prepare(tmp_path)
    (tmp_path / served.CURRENT).write_text('{"type":"completion","id":"chatcmpl-1"}\nnot json\n')
    with pytest.raises(Exception, match=r"completions.jsonl:2: not a JSON line"):
        served.completions_with_feedback(tmp_path)


# ---- routing (fast) -----------------------------------------------------------------------------


def _two_versions(tmp_path: Path) -> Registry:
    reg = Registry(tmp_path / "registry")
    reg.add(make_dist(tmp_path / "d1", "m", exact=0.5, seed="a"))
    reg.add(make_dist(tmp_path / "d2", "m", exact=0.6, seed="b"))
    reg.promote(Ref.parse("m:1"), "production")
    reg.promote(Ref.parse("m:2"), "candidate")
    reg.split("m", ["production=90", "candidate=10"])
    return reg


def test_ten_thousand_keys_split_90_10_and_stick_as_the_registry_routes(tmp_path: Path) -> None:
    reg = _two_versions(tmp_path)
    catalog = Catalog([], {reg.root: {"m"}}, None, make_engine=None)
    index = reg.index()
    counts: Counter[int] = Counter()
    for i in range(10_000):
        key = f"user-{i}"
        servable, variant, split, b, routed_by = catalog.resolve("m", key, "key")
        assert servable.version == reg.route("m", key, index)["version"]  # the CLI's and the Java kit's rule
        assert catalog.resolve("m", key, "key")[0] is servable  # sticky
        counts[servable.version] += 1
    assert abs(counts[1] / 10_000 - 0.90) <= 0.015 and abs(counts[2] / 10_000 - 0.10) <= 0.015
    # no key: production, and the route says so; pinned and alias references
    assert (
        catalog.resolve("m", None, "key")[0].version == 1 and catalog.resolve("m", None, "key")[4] == "none"
    )
    assert catalog.resolve("m:2", "k", "key")[1:] == ("pinned", None, None, "pinned")
    assert catalog.resolve("m@candidate", None, "key")[0].version == 2
    for model in ("nope", "m:9", "m@nope", "m:x:y"):
        with pytest.raises(ApiError) as e:
            catalog.resolve(model, None, "key")
        assert e.value.status == 404 and e.value.param == "model"
    assert set(catalog.model_ids()) == {"m", "m@candidate", "m@production", "m:1", "m:2"}


def test_registry_show_compares_the_served_ratings_paired_by_key(tmp_path: Path) -> None:
    reg = _two_versions(tmp_path)
    folder = tmp_path / "served"
    journal.prepare(folder)
    log = journal.Journal(folder, 1 << 20)
    n = 0
    for k in range(20):  # each key met both versions and rated both: v2 better for 15 of them
        for version, rating in (("m:2", 5 if k < 15 else 2), ("m:1", 3)):
            n += 1
            log.completion(
                {"id": f"chatcmpl-{n}", "version": version, "key": journal.key_hash(f"u{k}"), "status": "ok"}
            )
            log.feedback(f"chatcmpl-{n}", rating, None)
    log.completion({"id": "chatcmpl-x", "version": "m:1", "key": None, "status": "ok"})  # unrated
    log.close()
    show = [
        "registry",
        "show",
        "m:2",
        "--against",
        "m:1",
        "--served",
        str(folder),
        "--registry",
        str(reg.root),
    ]
    r = CliRunner().invoke(cli, [*show, "--json"])
    assert r.exit_code == 0, r.output
    said = json.loads(r.stdout)["served"]
    assert (said["new"]["ratings"], said["old"]["ratings"], said["old"]["mean"]) == (20, 20, 3.0)
    assert said["new"]["mean"] == (15 * 5 + 5 * 2) / 20
    p = said["paired"]
    assert (p["keys"], p["wins"], p["losses"], p["ties"]) == (20, 15, 5, 0)
    assert p["p_better"] < 0.05 < p["p_worse"]
    text = CliRunner().invoke(cli, show).output
    assert "served ratings" in text and "20 keys, 15 better, 5 worse" in text


def test_which_artifact_is_served() -> None:
    from edgeft.core.manifest import Artifact
    from edgeft.serve.catalog import choose_gguf

    def art(name: str, fmt: str, kind: str, passed: bool = True) -> Artifact:
        return Artifact(
            name, f"{name}.x", fmt, sha256="0" * 64, info={"type": kind, "verify": {"passed": passed}}
        )

    arts = [
        art("gguf-f16", "gguf", "f16"),
        art("gguf-q4_k_m", "gguf", "q4_k_m"),
        art("onnx-int8", "onnx", "int8"),
    ]
    assert choose_gguf(arts, None, "gguf-q4_k_m", "d").name == "gguf-q4_k_m"  # the recommended one
    assert choose_gguf(arts, None, "onnx-int8", "d").name == "gguf-f16"  # recommended is not a GGUF
    assert choose_gguf(arts, "f16", "gguf-q4_k_m", "d").name == "gguf-f16"
    with pytest.raises(InputError, match="continuous batching"):
        choose_gguf(arts, "int8", None, "d")
    with pytest.raises(InputError, match=r"no artifact of type 'q2_k' \(has f16, q4_k_m, int8\)"):
        choose_gguf(arts, "q2_k", None, "d")
    failed = [art("gguf-q2_k", "gguf", "q2_k", passed=False)]
    with pytest.raises(InputError, match="did not pass verify"):
        choose_gguf(failed, "q2_k", None, "d")
    with pytest.raises(InputError, match="no verified GGUF"):
        choose_gguf(failed, None, None, "d")


def test_health_is_503_while_loading_and_the_api_key_is_required(tmp_path: Path) -> None:
    from starlette.testclient import TestClient

    from edgeft.serve.app import Limits, Service

    class Loading:  # a catalog whose version is still loading
        engines: dict = {}

        def loading(self) -> list[str]:
            return ["m:1"]

        def model_ids(self) -> list[str]:
            return ["m", "m:1"]

    journal.prepare(tmp_path)
    service = Service(Loading(), journal.Journal(tmp_path, 1 << 20), Limits(api_key="sesame"))  # type: ignore[arg-type]
    client = TestClient(service.app())  # no lifespan: nothing is started
    r = client.get("/health")
    assert r.status_code == 503 and r.json() == {"status": "loading", "loading": ["m:1"]}
    r = client.get("/v1/models")
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    r = client.get("/v1/models", headers={"Authorization": "Bearer sesame"})
    assert [m["id"] for m in r.json()["data"]] == ["m", "m:1"]
    r = client.post("/v1/chat/completions", content=b"{not json", headers={"Authorization": "Bearer sesame"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
    assert client.get("/metrics").status_code == 200  # open to scrapers


def test_serve_refuses_unverified_bytes_and_open_binds_without_a_key(tmp_path: Path) -> None:
    dist = make_dist(tmp_path / "d", "m")
    gguf = dist / "gguf" / "m-q8_0.gguf"
    gguf.chmod(0o644)
    gguf.write_bytes(gguf.read_bytes()[:-1] + b"!")
    runner = CliRunner()
    log = ["--log-dir", str(tmp_path / "served")]
    r = runner.invoke(cli, ["serve", str(dist), "--port", "0", *log])
    assert r.exit_code == 5 and "not the verified" in r.output and "not served" in r.output, r.output
    r = runner.invoke(cli, ["serve", str(dist), "--host", "0.0.0.0", *log])
    assert r.exit_code == 5 and "--api-key" in r.output
    r = runner.invoke(cli, ["serve", "nope", "--registry", str(tmp_path / "none"), *log])
    assert r.exit_code == 5 and "no registry here" in r.output
    r = runner.invoke(cli, ["serve", str(tmp_path), *log])
    assert r.exit_code == 5 and "neither a dist folder" in r.output
    assert not (tmp_path / "served").exists()  # nothing written for a refused start


def test_the_engine_client_reads_sse_lines_and_names_a_cut_answer(tmp_path: Path) -> None:
    """edgeft.serve.upstream against a stand-in child: lines split across chunks arrive whole, the
    request body arrives as JSON, an answer cut mid-body and a missing socket are UpstreamErrors."""
    import asyncio

    from edgeft.serve import upstream

    path = str(tmp_path / "engine.sock")
    seen: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(re.search(rb"(?i)content-length: (\d+)", head).group(1))  # type: ignore[union-attr]
        seen.append(await reader.readexactly(length))
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for part in (b'data: {"a', b'": 1}\n'):  # one SSE line split over two chunks
            writer.write(b"%x\r\n%s\r\n" % (len(part), part))
        if b"cut" not in seen[-1]:
            writer.write(b"0\r\n\r\n")
        await writer.drain()
        writer.close()

    async def main() -> None:
        server = await asyncio.start_unix_server(handle, path)
        client = upstream.Client(path)
        async with client.stream("POST", "/completion", {"prompt": [1, 2]}) as r:
            assert r.status_code == 200
            assert [line async for line in r.aiter_lines()] == ['data: {"a": 1}']
        assert json.loads(seen[0]) == {"prompt": [1, 2]}
        with pytest.raises(upstream.UpstreamError, match="mid-answer"):
            async with client.stream("POST", "/completion", {"cut": True}) as r:
                [line async for line in r.aiter_lines()]
        server.close()
        await server.wait_closed()
        with pytest.raises(upstream.UpstreamError, match="cannot reach llama-server"):
            async with upstream.Client(str(tmp_path / "none.sock")).stream("GET", "/health"):
                pass

    asyncio.run(main())


def test_a_version_that_cannot_start_ends_serve_with_its_error(tmp_path: Path, monkeypatch) -> None:
    """A failure to load at start is the failure's own Error: and exit code (here the missing
    llama-server, an InputError: 5), not the 503 a request would get, and never a traceback."""
    dist = make_dist(tmp_path / "d", "m")
    monkeypatch.setenv("EDGEFT_LLAMA_TOOLS", str(tmp_path / "no-tools"))
    r = CliRunner().invoke(cli, ["serve", str(dist), "--port", "0", "--log-dir", str(tmp_path / "served")])
    assert r.exit_code == 5 and "llama-server is missing" in r.output, (r.output, r.exception)
    assert "Traceback" not in r.output


# ---- the server on a real build (slow) ----------------------------------------------------------


class Server:
    def __init__(self, proc: subprocess.Popen[str], url: str, lines: queue.Queue[str], log_dir: Path):
        self.proc, self.url, self.lines, self.log_dir = proc, url, lines, log_dir

    def client(self, **kw):  # type: ignore[no-untyped-def]
        from openai import OpenAI

        return OpenAI(
            base_url=self.url + "/v1", api_key=kw.pop("api_key", "unused"), max_retries=0, timeout=60, **kw
        )

    def get(self, path: str, **kw):  # type: ignore[no-untyped-def]
        import httpx

        return httpx.get(self.url + path, timeout=30, **kw)

    def post(self, path: str, body: dict, **kw):  # type: ignore[no-untyped-def]
        import httpx

        return httpx.post(self.url + path, json=body, timeout=60, **kw)

    def said(self) -> str:
        out = []
        while not self.lines.empty():
            out.append(self.lines.get_nowait())
        return "".join(out)


@contextmanager
def serving(cwd: Path, *args: str, ready: bool = True) -> Iterator[Server]:
    """`edgeft serve ARGS --port 0` in a child process; its URL from its first line; /health 200."""
    import httpx

    log_dir = cwd / "served"
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgeft", "serve", *args, "--port", "0", "--log-dir", str(log_dir)],
        cwd=cwd,
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.put(line)

    threading.Thread(target=pump, daemon=True).start()
    try:
        deadline, url, seen = time.monotonic() + 60, None, []
        while url is None:
            assert time.monotonic() < deadline and proc.poll() is None, "".join(seen)
            try:
                line = lines.get(timeout=0.5)
            except queue.Empty:
                continue
            seen.append(line)
            m = re.search(r"on (http://127\.0\.0\.1:\d+)/v1", line)
            url = m.group(1) if m else None
        server = Server(proc, url, lines, log_dir)
        while ready:
            assert time.monotonic() < deadline and proc.poll() is None, "".join(seen) + server.said()
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        yield server
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def verify_probes(validation: Path, n: int = 4) -> list[list[dict[str, str]]]:
    """The verify probes of a build: its first validation conversations and the fixed edge cases."""
    from edgeft.data.rows import read_split
    from edgeft.pipeline.verify.probes import EDGE_CASES, probes_from

    probes = [p.conversation for p in probes_from(read_split(validation), n)]
    head = probes[0][:-1]
    return probes + [[*head, {"role": "user", "content": text}] for text in EDGE_CASES.values()]


def answers_as_edgeft_run(client, model: str, gguf: Path, probes: list, max_tokens: int = 24) -> None:  # type: ignore[no-untyped-def]
    """The served greedy answer to each probe is `edgeft run`'s on the same file, token for token
    (the text, the prompt and reply token counts, whether it stopped at the end of its turn)."""
    from edgeft.cli.run import respond
    from edgeft.runtimes import GREEDY
    from edgeft.runtimes.llamacpp import LlamaCppRuntime

    rt = LlamaCppRuntime(gguf, n_ctx=None, all_logits=False)
    try:
        for messages in probes:
            rt.llm.reset()  # a fresh context per prompt, as `edgeft run` has
            want = respond(rt, messages, max_tokens, GREEDY)
            got = client.chat.completions.create(
                model=model, messages=messages, temperature=0, max_tokens=max_tokens
            )
            # A reply cut by max_tokens inside a multi-byte character: edgeft run decodes the
            # dangling bytes as U+FFFD, llama-server holds them back (the tokens are the same).
            text = want.text.removesuffix("\ufffd") if not want.stopped else want.text
            assert got.choices[0].message.content == text, messages
            assert (got.usage.prompt_tokens, got.usage.completion_tokens) == (
                want.prompt_tokens,
                want.completion_tokens,
            )
            assert got.choices[0].finish_reason == ("stop" if want.stopped else "length")
    finally:
        rt.close()


@pytest.mark.slow
def test_the_openai_client_against_a_served_dist(built: dict, tmp_path: Path) -> None:
    import jsonschema
    import openai

    dist = built["dist"]
    with serving(tmp_path, str(dist), "--type", "q8_0") as s:
        c = s.client()
        assert [m.id for m in c.models.list()] == ["micro"]
        # The served greedy answer is edgeft run's, token for token, on the verify probes.
        probes = verify_probes(built["root"] / "runs" / "micro" / "merge" / "validation.jsonl")
        answers_as_edgeft_run(c, "micro", dist / "gguf" / "micro-q8_0.gguf", probes)
        # streaming, with usage last; the same text as without
        whole = c.chat.completions.create(model="micro", messages=Q, temperature=0, max_completion_tokens=12)
        # A request offering an HTTP/2 upgrade, as every JDK HttpClient sends by default: answered
        # over HTTP/1.1 with its body read (uvicorn's httptools parser drops it: uvicorn#2722).
        body = json.dumps({"model": "micro", "messages": Q, "temperature": 0, "max_tokens": 12}).encode()
        host, port = s.url.removeprefix("http://").rsplit(":", 1)
        with socket.create_connection((host, int(port)), timeout=60) as raw:
            raw.sendall(
                b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\n"
                b"Upgrade: h2c\r\nHTTP2-Settings: AAEAAEAAAAIAAAABAAMAAABkAAQBAAAAAAUAAEAA\r\n"
                b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
            )
            reply = raw.makefile("rb")
            status = reply.readline()
            headers = {}
            for _ in range(100):  # bounded: a server that closed early reads b"" forever
                line = reply.readline()
                if line in (b"\r\n", b""):
                    break
                name, _, value = line.decode().partition(":")
                headers[name.lower()] = value
            assert status.startswith(b"HTTP/1.1 200"), (status, headers)
            answer = json.loads(reply.read(int(headers["content-length"])))
        assert answer["choices"][0]["message"]["content"] == whole.choices[0].message.content
        parts, usage = [], None
        for ch in c.chat.completions.create(
            model="micro",
            messages=Q,
            temperature=0,
            max_completion_tokens=12,
            stream=True,
            stream_options={"include_usage": True},
        ):
            if ch.usage:
                usage = ch.usage
            elif ch.choices and ch.choices[0].delta.content:
                parts.append(ch.choices[0].delta.content)
        assert "".join(parts) == whole.choices[0].message.content
        assert usage is not None and usage.completion_tokens == whole.usage.completion_tokens <= 12
        # json_schema output validates; json_object parses
        schema = {
            "type": "object",
            "properties": {"sql": {"type": "string", "maxLength": 20}},
            "required": ["sql"],
        }
        r = c.chat.completions.create(
            model="micro",
            messages=Q,
            temperature=0,
            max_tokens=60,
            response_format={"type": "json_schema", "json_schema": {"name": "q", "schema": schema}},
        )
        jsonschema.validate(json.loads(r.choices[0].message.content), schema)
        r = c.chat.completions.create(
            model="micro", messages=Q, max_tokens=60, seed=1, response_format={"type": "json_object"}
        )
        assert isinstance(json.loads(r.choices[0].message.content), dict)
        # errors come back as OpenAI errors naming the field
        with pytest.raises(openai.BadRequestError) as e:
            c.chat.completions.create(model="micro", messages=Q, n=2)
        assert e.value.body["param"] == "n"
        with pytest.raises(openai.BadRequestError) as e:
            c.chat.completions.create(model="micro", messages=Q, extra_body={"mirostat": 2})
        assert e.value.body["param"] == "mirostat"
        with pytest.raises(openai.NotFoundError):
            c.chat.completions.create(model="other", messages=Q)
        with pytest.raises(openai.BadRequestError) as e:  # a model not trained on tool rows
            c.chat.completions.create(
                model="micro", messages=Q, tools=[{"type": "function", "function": {"name": "f"}}]
            )
        assert e.value.body["param"] == "tools" and "not trained for tool calls" in e.value.body["message"]
        with pytest.raises(openai.BadRequestError) as e:  # past the context
            c.chat.completions.create(model="micro", messages=[{"role": "user", "content": "word " * 5000}])
        assert e.value.code == "context_length_exceeded"
        big = s.post(
            "/v1/chat/completions",
            {"model": "micro", "messages": [{"role": "user", "content": "x" * (2 << 20)}]},
        )
        assert big.status_code == 413
        # feedback, metrics, the log
        assert (
            s.post("/v1/feedback", {"id": whole.id, "rating": 5, "correction": "SELECT 1;"}).status_code
            == 200
        )
        assert s.post("/v1/feedback", {"id": whole.id, "rating": 9}).json()["error"]["param"] == "rating"
        metrics = s.get("/metrics").text
        assert re.search(r'edgeft_requests_total\{status="ok",variant="dist",version="micro"\} \d+', metrics)
        assert (
            "edgeft_time_to_first_token_seconds_bucket" in metrics
            and "edgeft_engine_resident_bytes" in metrics
        )
    rows = {r["id"]: r for r in served.completions_with_feedback(tmp_path / "served")}
    assert rows[whole.id]["rating"] == 5 and rows[whole.id]["version"] == "micro"
    assert len(rows) >= len(probes) + 4


@pytest.fixture(scope="module")
def two_version_registry(built: dict, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The build registered twice (the second without its f16 GGUF: another dist, served from
    its q8_0), v1 production, v2 candidate, a 90/10 split."""
    root = tmp_path_factory.mktemp("served-registry")
    second = root / "second"
    shutil.copytree(built["dist"], second)
    for name in ("manifest.json", "edgeft.json"):  # the dist's two manifests agree
        manifest = json.loads((second / name).read_text())
        dropped = next(a for a in manifest["artifacts"] if a["name"] == "gguf-f16")
        manifest["artifacts"].remove(dropped)
        manifest["files"] = [f for f in manifest.get("files", []) if f["path"] != dropped["path"]]
        manifest["recommended"] = "gguf-q8_0"
        (second / name).chmod(0o644)
        (second / name).write_text(json.dumps(manifest, indent=2))
    (second / dropped["path"]).unlink()
    reg = Registry(root / "registry")
    reg.add(built["dist"])
    reg.add(second)
    reg.promote(Ref.parse("micro:1"), "production")
    reg.promote(Ref.parse("micro:2"), "candidate")
    reg.split("micro", ["production=90", "candidate=10"])
    return reg.root


@pytest.mark.slow
def test_a_split_routes_sticky_and_a_promotion_during_traffic_fails_nothing(
    two_version_registry: Path, tmp_path: Path
) -> None:
    work = tmp_path / "copy"
    shutil.copytree(two_version_registry, work / "registry")
    reg = Registry(work / "registry")
    with serving(work, "micro", "--registry", "registry") as s:
        assert {"micro", "micro@production", "micro@candidate", "micro:1", "micro:2"} <= {
            m.id for m in s.client().models.list()
        }
        index = reg.index()
        for i in range(60):  # the served version of a key is the registry's, and stays it
            key = f"k{i}"
            want = f"micro:{reg.route('micro', key, index)['version']}"
            for _ in range(2):
                r = s.post(
                    "/v1/chat/completions",
                    {"model": "micro", "messages": Q, "max_tokens": 2},
                    headers={"X-Edgeft-Key": key},
                )
                assert r.status_code == 200 and r.headers["x-edgeft-version"] == want
                assert r.headers["x-edgeft-routing"] == "key"
        r = s.post("/v1/chat/completions", {"model": "micro", "messages": Q, "max_tokens": 2, "user": "k7"})
        assert r.headers["x-edgeft-routing"] == "user"
        assert r.headers["x-edgeft-version"] == f"micro:{reg.route('micro', 'k7', index)['version']}"
        r = s.post("/v1/chat/completions", {"model": "micro", "messages": Q, "max_tokens": 2})
        assert (r.headers["x-edgeft-routing"], r.headers["x-edgeft-version"]) == ("no-key", "micro:1")

        # Traffic from 4 threads while version 2 is promoted and the split ended: nothing fails,
        # and new requests reach version 2 once it takes effect.
        stop, failures, seen = threading.Event(), [], Counter()

        def traffic(n: int) -> None:
            for i in range(400):  # bounded
                if stop.is_set():
                    return
                r = s.post(
                    "/v1/chat/completions",
                    {"model": "micro", "messages": Q, "max_tokens": 4, "stream": i % 2 == 0},
                    headers={"X-Edgeft-Key": f"t{n}-{i}"},
                )
                if r.status_code != 200 or (i % 2 == 0 and "[DONE]" not in r.text):
                    failures.append((r.status_code, r.text[:200]))
                seen[r.headers.get("x-edgeft-version")] += 1

        threads = [threading.Thread(target=traffic, args=(n,)) for n in range(4)]
        for t in threads:
            t.start()
        try:
            time.sleep(1.0)
            runner = CliRunner()
            out = runner.invoke(
                cli,
                [
                    "registry",
                    "promote",
                    "micro:2",
                    "--to",
                    "production",
                    "--force",
                    "--reason",
                    "test",
                    "--registry",
                    str(reg.root),
                ],
            )
            assert out.exit_code == 0, out.output
            out = runner.invoke(cli, ["registry", "split", "micro", "--off", "--registry", str(reg.root)])
            assert out.exit_code == 0, out.output
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                r = s.post(
                    "/v1/chat/completions",
                    {"model": "micro", "messages": Q, "max_tokens": 2},
                    headers={"X-Edgeft-Key": "k0"},
                )
                if r.headers.get("x-edgeft-version") == "micro:2":
                    break
                time.sleep(0.2)
            assert r.headers["x-edgeft-version"] == "micro:2", s.said()
            time.sleep(0.5)
        finally:
            stop.set()
            for t in threads:
                t.join(60)
        assert not failures, failures[:3]
        assert seen["micro:2"] > 0 and sum(seen.values()) > 20
    records = [r for _, _, r in served.records(work / "served") if r["type"] == "completion"]
    assert {r["status"] for r in records} == {"ok"} and all(r["key"] != "k0" for r in records)


@pytest.mark.slow
def test_overload_disconnects_kill_and_ctrl_c(built: dict, tmp_path: Path) -> None:
    import httpx

    dist = str(built["dist"])
    # A reply of at least 120 characters whatever the CPU samples: the grammar of a JSON schema
    # with a long string keeps the model from ending early, so requests overlap on any machine.
    schema = {"type": "object", "properties": {"a": {"type": "string", "minLength": 120}}, "required": ["a"]}
    long = {
        "model": "micro",
        "messages": Q,
        "max_tokens": 200,
        "temperature": 1.0,
        "seed": 3,
        "response_format": {"type": "json_schema", "json_schema": {"name": "long", "schema": schema}},
    }
    with serving(tmp_path, dist, "--slots", "1", "--queue", "1") as s:
        # Overload: one slot and one waiting; the rest get 429 with Retry-After, never a 500.
        statuses: list[int] = []

        def one() -> None:
            r = s.post("/v1/chat/completions", long)
            statuses.append(r.status_code)
            if r.status_code == 429:
                assert r.headers["retry-after"] and r.json()["error"]["code"] == "overloaded"

        threads = [threading.Thread(target=one) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert set(statuses) <= {200, 429} and 200 in statuses and 429 in statuses, statuses
        # A client that disconnects mid-stream frees its place: afterwards a request gets in.
        for _ in range(2):
            with httpx.stream(
                "POST",
                s.url + "/v1/chat/completions",
                json={**long, "stream": True, "max_tokens": 2000},
                timeout=30,
            ) as r:
                for _line in r.iter_lines():
                    break
        deadline = time.monotonic() + 20
        while True:
            r = s.post("/v1/chat/completions", {**long, "max_tokens": 2})
            if r.status_code == 200 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert r.status_code == 200, r.text
        # kill -9 mid-stream: the log reads back whole, the next start serves at once
        with httpx.stream(
            "POST", s.url + "/v1/chat/completions", json={**long, "stream": True}, timeout=30
        ) as r:
            for _line in r.iter_lines():
                s.proc.kill()
                break
        s.proc.wait(10)
    list(served.records(tmp_path / "served"))
    with serving(tmp_path, dist) as s:
        assert s.post("/v1/chat/completions", {**long, "max_tokens": 2}).status_code == 200
        # Ctrl-C drains: a stream in flight ends with [DONE], then the server exits 0.
        chunks: list[str] = []

        def stream() -> None:
            with httpx.stream(
                "POST",
                s.url + "/v1/chat/completions",
                json={**long, "stream": True, "max_tokens": 150},
                timeout=60,
            ) as r:
                for line in r.iter_lines():
                    chunks.append(line)

        t = threading.Thread(target=stream)
        t.start()
        deadline = time.monotonic() + 20
        while not chunks and time.monotonic() < deadline:
            time.sleep(0.01)
        s.proc.send_signal(signal.SIGINT)
        t.join(60)
        assert s.proc.wait(60) == 0, s.said()
        assert chunks and chunks[-1] == "data: [DONE]" or "data: [DONE]" in chunks, chunks[-3:]
    assert not list(
        Path(tempfile.gettempdir()).glob(f".edgeft-serve.tmp-{s.proc.pid}-*")
    )  # its sockets' folder


@pytest.mark.slow
@pytest.mark.skipif(
    shutil.which("javac") is None, reason="needs OpenJDK (scripts/setup.sh installs it as root)"
)
def test_the_java_kit_client_calls_the_server_as_langchain4j_and_spring_ai_do(
    two_version_registry: Path, tmp_path: Path
) -> None:
    """ServeClient (java.net.http only) sends LangChain4j's and Spring AI's bodies: a call, a
    stream with include_usage and a json_object call; the A/B key routes it as the registry does."""
    kit = Path(__file__).resolve().parent.parent / "edgeft" / "ship" / "javakit"
    out = tmp_path / "out"
    sources = [str(kit / "Registry.java"), str(kit / "ServeClient.java")]
    subprocess.run(["javac", "-d", str(out), *sources], check=True, capture_output=True)
    work = tmp_path / "work"
    shutil.copytree(two_version_registry, work / "registry")
    reg = Registry(work / "registry")
    with serving(work, "micro", "--registry", "registry", "--api-key", "sesame") as s:
        java = ["java", "-cp", str(out), "edgeft.kit.ServeClient", s.url, "micro", Q[0]["content"]]
        env = {**os.environ, "EDGEFT_API_KEY": "sesame"}
        for key in ("alice", "bob", "k7"):
            done = subprocess.run([*java, key], capture_output=True, text=True, env=env, timeout=120)
            assert done.returncode == 0, done.stderr
            said = dict(line.split(": ", 1) for line in done.stdout.splitlines())
            want = f"micro:{reg.route('micro', key)['version']}"
            assert said["call.version"] == said["stream.version"] == said["json.version"] == want
            assert said["call.text"] == said["stream.text"] and said["call.usage"] == said["stream.usage"]
            text = json.loads(said["json.text"])  # grammar-constrained: an object, or its start when cut
            assert (
                isinstance(json.loads(text), dict) if said["json.finish"] == "stop" else text.startswith("{")
            )
        wrong = subprocess.run(
            [*java, "x"], capture_output=True, text=True, env={**env, "EDGEFT_API_KEY": "nope"}
        )
        assert wrong.returncode == 1 and "HTTP 401" in wrong.stderr
