"""Serving throughput and latency: `edgeft serve` against bare llama-server and llama-cpp-python's
server, on the same GGUF, in one run.

Each server runs alone (one after the other, so they never share the CPU) with the same slots and
context; streaming chat-completion clients send the example's questions (greedy, at most
`--max-tokens` tokens each) at 1, 4 and 8 at once. Printed per server and concurrency: aggregate
generated tokens/s, time to first token p50/p99, the ratios to bare llama-server, and how many
answers equal bare llama-server's (the same work). Every server's answers are counted by the
GGUF's own tokenizer: their usage counts differ by the end-of-generation token, which llama-server
counts and edgeft serve, as OpenAI, does not.

edgeft serve runs as users run it: by default (flash attention and prompt caching off, so that a
greedy answer is `edgeft run`'s and never depends on the request before it), with --prompt-cache,
and with --prompt-cache --flash-attn, bare llama-server's own engine settings, which is the
comparison the goal line judges. Every request carries an X-Edgeft-Key (hashed, routed, logged
with its prompt and reply) and is counted in its metrics. Peak resident memory of each server (for
edgeft, its front process and the llama-server of the loaded version) is printed too, and the CPU
each server used per request (from /proc: all its processes, and edgeft's front alone).

llama-cpp-python's server needs its `[server]` extras (FastAPI and friends); they are installed
once into ~/.cache/edgeft/bench-deps (never into .venv, whose Starlette they would change).

    .venv/bin/python scripts/bench/serve.py --dist examples/nl2sql-smollm2/dist/nl2sql-smollm2 --type q8_0
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DEPS = Path.home() / ".cache" / "edgeft" / "bench-deps"
LCPP_EXTRAS = ["fastapi", "sse-starlette", "starlette-context", "pydantic-settings", "uvicorn"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def questions(n: int) -> list[str]:
    rows = [json.loads(line) for line in (REPO / "examples" / "nl2sql" / "data" / "nl2sql.jsonl").open()]
    return [f"{r['instruction']}\n{r['input']}" for r in rows[:n]]


def children(pid: int) -> list[int]:
    return [int(p) for task in Path(f"/proc/{pid}/task").glob("*/children") for p in task.read_text().split()]


def cpu(pid: int) -> tuple[float, float]:
    """CPU seconds (user + system) used so far by a process itself, and by it with its children
    (edgeft serve's front alone, and the front with its llama-server)."""

    def used(p: int) -> float:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return 0.0
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    own = used(pid)
    return own, own + sum(used(c) for c in children(pid))


def hwm(pid: int) -> int:
    """Peak resident bytes of a process and its children (VmHWM each)."""
    total = 0
    for p in [pid, *children(pid)]:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            pass
    return total


async def one(client, url: str, body: dict, headers: dict) -> tuple[float, str, float]:
    """(time to first token, the answer's text, seconds) of one streaming request."""
    start = time.perf_counter()
    first, parts = None, []
    async with client.stream("POST", url, json=body, headers=headers) as r:
        r.raise_for_status()
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            data = json.loads(line[6:])
            for choice in data.get("choices") or []:
                content = (choice.get("delta") or {}).get("content")
                if content:
                    if first is None:
                        first = time.perf_counter()
                    parts.append(content)
    end = time.perf_counter()
    return ((first or end) - start, "".join(parts), end - start)


async def load(url: str, model: str, clients: int, per_client: int, max_tokens: int, keyed: bool) -> dict:
    import httpx

    qs = questions(clients * per_client)
    results: list[tuple[float, str, float, int]] = []

    async def worker(w: int) -> None:
        # A new connection per request: llama-server closes one after a streamed answer without
        # saying so (a reused connection then fails); the same for every server measured.
        limits = httpx.Limits(max_keepalive_connections=0)
        async with httpx.AsyncClient(timeout=300, limits=limits) as client:
            for i in range(per_client):
                n = (w * per_client + i) % len(qs)
                body = {
                    "model": model,
                    "messages": [{"role": "user", "content": qs[n]}],
                    "temperature": 0,
                    "max_tokens": max_tokens,
                    "stream": True,
                    "stream_options": {"include_usage": True},
                }
                headers = {"X-Edgeft-Key": f"user-{w}-{i}"} if keyed else {}
                ttft, text, seconds = await one(client, url, body, headers)
                results.append((ttft, text, seconds, n))

    start = time.perf_counter()
    await asyncio.gather(*(worker(w) for w in range(clients)))
    wall = time.perf_counter() - start
    ttft = sorted(r[0] for r in results)
    return {
        "wall": wall,
        "answers": [(r[3], r[1]) for r in results],
        "ttft_p50": statistics.median(ttft),
        "ttft_p99": ttft[min(len(ttft) - 1, int(round(0.99 * (len(ttft) - 1))))],
        "requests": len(results),
        "ttfts": ttft,
    }


def counted(result: dict, count) -> dict:
    """Tokens/s of one run with every server's answers counted by the same tokenizer: the
    servers' own usage counts differ (llama-server counts the end-of-generation token, edgeft
    serve, like OpenAI, does not), so their sums would credit the same work differently."""
    tokens = sum(count(text) for _, text in result["answers"])
    return {**result, "tokens": tokens, "tokens_per_s": tokens / result["wall"]}


def pooled(results: list[dict]) -> dict:
    """Repeated runs of one server and concurrency: the median tokens/s, TTFT over every request."""
    ttft = sorted(t for r in results for t in r["ttfts"])
    return {
        "tokens_per_s": statistics.median(r["tokens_per_s"] for r in results),
        "ttft_p50": statistics.median(ttft),
        "ttft_p99": ttft[min(len(ttft) - 1, int(round(0.99 * (len(ttft) - 1))))],
        "requests": sum(r["requests"] for r in results),
        "cpu_ms": statistics.median(r["cpu_ms"] for r in results),
        "front_ms": statistics.median(r["front_ms"] for r in results),
        "tokens": sum(r["tokens"] for r in results),
    }


def wait_ready(url: str, proc: subprocess.Popen, what: str, timeout: float = 180) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"{what} exited ({proc.returncode})")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    sys.exit(f"{what} did not start in {timeout:g} s")


def lcpp_deps() -> Path | None:
    if not (DEPS / ".done").exists():
        print(f"installing llama-cpp-python's server extras into {DEPS} (once)", file=sys.stderr)
        proc = subprocess.run(
            [sys.executable, "-m", "pip", "install", "-q", "--target", str(DEPS), *LCPP_EXTRAS],
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0:
            print(f"llama-cpp-python's server skipped: {proc.stderr[-300:]}", file=sys.stderr)
            return None
        (DEPS / ".done").touch()
    return DEPS


def server(kind: str, gguf: Path, dist: Path, gguf_type: str, slots: int, ctx: int, workdir: Path):
    """(process, base URL, model name, whether requests carry keys) for one server kind."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    if kind.startswith("edgeft serve"):
        cmd = [sys.executable, "-m", "edgeft", "serve", str(dist), "--type", gguf_type, "--port", str(port)]
        cmd += kind.split()[2:]  # e.g. --prompt-cache
        cmd += [
            "--slots",
            str(slots),
            "--queue",
            "64",
            "--context",
            str(ctx),
            "--log-dir",
            str(workdir / "served"),
        ]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_ready(base + "/health", proc, kind)
        name = json.loads((dist / "manifest.json").read_text())["name"]
        return proc, base, name, True
    if kind.startswith("llama-server"):
        from edgeft.models import llama_tools

        cmd = [
            str(llama_tools.tool("llama-server")),
            "-m",
            str(gguf),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ]
        cmd += ["-np", str(slots), "-c", str(ctx * slots), "--no-kv-unified", "--no-webui", "--jinja"]
        cmd += ["-lv", "2", *llama_tools.no_repack(), *kind.split()[1:]]  # e.g. -fa off
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_ready(base + "/health", proc, kind)
        return proc, base, "model", False
    deps = lcpp_deps()
    if deps is None:
        return None
    env = {**os.environ, "PYTHONPATH": f"{deps}:{os.environ.get('PYTHONPATH', '')}"}
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--host", "127.0.0.1"]
    cmd += ["--port", str(port), "--n_ctx", str(ctx), "--model_alias", "model"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    wait_ready(base + "/v1/models", proc, kind)
    return proc, base, "model", False


def stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--dist", type=Path, default=REPO / "examples" / "nl2sql-smollm2" / "dist" / "nl2sql-smollm2"
    )
    parser.add_argument("--type", default="q8_0", help="GGUF type in the dist")
    parser.add_argument("--slots", type=int, default=8)
    parser.add_argument("--context", type=int, default=1024, help="tokens per slot")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--per-client", type=int, default=12, help="requests each client sends in turn")
    parser.add_argument("--levels", default="1,4,8")
    parser.add_argument("--repeat", type=int, default=3, help="alternating runs of every server")
    parser.add_argument(
        "--kinds",
        default=(
            "llama-server,llama-server -fa off,edgeft serve,edgeft serve --prompt-cache,"
            "edgeft serve --prompt-cache --flash-attn,llama-cpp-python server"
        ),
        help="servers to measure, comma-separated (the first is the baseline)",
    )
    args = parser.parse_args()

    manifest = json.loads((args.dist / "manifest.json").read_text())
    entry = next(a for a in manifest["artifacts"] if a["format"] == "gguf" and a["type"] == args.type)
    gguf = args.dist / entry["path"]
    levels = [int(x) for x in args.levels.split(",")]
    print(
        f"# {gguf.name} ({gguf.stat().st_size / 1e6:.1f} MB), {args.slots} slots × {args.context} tokens, "
        f"greedy, ≤{args.max_tokens} tokens per answer, {args.per_client} requests per client, "
        f"{args.repeat} alternating runs (median tokens/s; TTFT over all requests)"
    )
    print(
        f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, {time.strftime('%Y-%m-%d')}"
    )
    kinds = args.kinds.split(",")
    runs: dict[str, dict[int, list[dict]]] = {k: {c: [] for c in levels} for k in kinds}
    from edgeft.runtimes.llamacpp import LlamaCppPrompter

    vocab = LlamaCppPrompter(gguf)
    known: dict[str, int] = {}

    def count(text: str) -> int:
        if text not in known:
            known[text] = len(vocab.tokenize(text, add_special=False))
        return known[text]

    memory: dict[str, int] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.repeat):  # the servers alternate: a slow spell of the machine hits all
            for kind in kinds:
                started = server(
                    kind, gguf, args.dist, args.type, args.slots, args.context, Path(tmp) / str(rep)
                )
                if started is None:
                    runs.pop(kind, None)
                    continue
                proc, base, model, keyed = started
                try:
                    asyncio.run(
                        load(base + "/v1/chat/completions", model, 1, 2, args.max_tokens, keyed)
                    )  # warm-up
                    for c in levels:
                        before = cpu(proc.pid)
                        r = counted(
                            asyncio.run(
                                load(
                                    base + "/v1/chat/completions",
                                    model,
                                    c,
                                    args.per_client,
                                    args.max_tokens,
                                    keyed,
                                )
                            ),
                            count,
                        )
                        after = cpu(proc.pid)
                        r["front_ms"] = 1000 * (after[0] - before[0]) / r["requests"]
                        r["cpu_ms"] = 1000 * (after[1] - before[1]) / r["requests"]
                        runs[kind][c].append(r)
                        print(
                            f"{kind:>40} x{c}: {r['tokens_per_s']:7.1f} tok/s  TTFT p50 {r['ttft_p50'] * 1000:6.0f} ms"
                            f"  p99 {r['ttft_p99'] * 1000:6.0f} ms  ({r['requests']} requests, {r['tokens']} tokens)",
                            file=sys.stderr,
                        )
                    memory[kind] = max(memory.get(kind, 0), hwm(proc.pid))
                finally:
                    stop(proc)
    table = {k: {c: pooled(rs) for c, rs in per.items()} for k, per in runs.items()}
    bare = table[kinds[0]]
    # The same work? Greedy answers to the same questions, compared with the baseline's first.
    reference: dict[int, str] = {}
    for result in (r for rs in runs[kinds[0]].values() for r in rs):
        for n, text in result["answers"]:
            reference.setdefault(n, text)
    same = {
        k: (
            sum(text == reference.get(n) for rs in per.values() for r in rs for n, text in r["answers"]),
            sum(len(r["answers"]) for rs in per.values() for r in rs),
        )
        for k, per in runs.items()
    }
    print(
        "\n(tokens: every server's answers counted by the GGUF's own tokenizer; the servers' usage counts "
        "differ by the end-of-generation token, which llama-server counts)"
    )
    print(
        "\n| server | clients | tokens/s | × bare | TTFT p50 ms | TTFT p99 ms | p99 × bare | answers as bare's |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for kind, rows in table.items():
        for c, r in rows.items():
            print(
                f"| {kind} | {c} | {r['tokens_per_s']:.1f} | {r['tokens_per_s'] / bare[c]['tokens_per_s']:.2f} | "
                f"{r['ttft_p50'] * 1000:.0f} | {r['ttft_p99'] * 1000:.0f} | {r['ttft_p99'] / bare[c]['ttft_p99']:.2f} | "
                f"{same[kind][0]}/{same[kind][1]} |"
            )
    print("\n| server | clients | CPU ms per request, all its processes | edgeft's front alone |")
    print("|---|---|---|---|")
    for kind, rows in table.items():
        for c, r in rows.items():
            front = f"{r['front_ms']:.1f}" if kind.startswith("edgeft serve") else ""
            print(f"| {kind} | {c} | {r['cpu_ms']:.1f} | {front} |")
    print("\n| server | peak resident memory (MB) |")
    print("|---|---|")
    for kind, b in memory.items():
        print(f"| {kind} | {b / 1e6:.0f} |")
    # The goal compares like with like: edgeft serve with bare llama-server's engine settings (flash
    # attention and prompt caching on). Its defaults trade speed for answers identical to `edgeft
    # run`'s; their ratios are in the table.
    like = "edgeft serve --prompt-cache --flash-attn"
    if like in table and 8 in levels:
        e, b = table[like][8], bare[8]
        ok = e["tokens_per_s"] >= 0.95 * b["tokens_per_s"] and e["ttft_p99"] <= 1.2 * b["ttft_p99"]
        print(
            f"goal (edgeft serve with bare llama-server's engine settings, 8 clients: ≥ 0.95× throughput, "
            f"p99 TTFT ≤ 1.2×): {e['tokens_per_s'] / b['tokens_per_s']:.2f}× and "
            f"{e['ttft_p99'] / b['ttft_p99']:.2f}×, {'met' if ok else 'NOT met'}"
        )


if __name__ == "__main__":
    main()
