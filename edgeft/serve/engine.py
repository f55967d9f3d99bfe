"""One servable version: its verified GGUF behind a llama-server child (llama.cpp's own server,
built by set-up from the pinned source package: continuous batching over parallel slots, grammar-
constrained JSON), and the prompter that turns a conversation into the token ids `edgeft run`
would give it (edgeft.runtimes.llamacpp.LlamaCppPrompter).

The child listens on a unix socket in a private folder (mode 0700), never on a network port, and
is killed with edgeft (PR_SET_PDEATHSIG). The prompt goes to its `/completion` as token ids, so
the rendered template is edgeft's, the one verify proved, not the child's own rendering.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import subprocess
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeft.core.errors import EdgeftError, InputError, ToolError
from edgeft.core.fileio import sha256_file
from edgeft.core.workdir import die_with_parent
from edgeft.models import llama_tools
from edgeft.serve import upstream

log = logging.getLogger(__name__)

LOAD_TIMEOUT = 300.0  # seconds a child may take to load its model


@dataclass
class Servable:
    """What an engine serves: a version's id (`nl2sql-tiny:3`, or a dist's name), its model name
    and version number (None for a dist), the GGUF, the sha256 it was verified with, its type."""

    id: str
    model: str
    version: int | None
    gguf: Path
    sha256: str
    artifact_type: str | None
    tool_format: str | None = None  # edgeft.data.tools.FORMAT when the model was trained on tool rows

    @property
    def key(self) -> tuple[str, int | None, str]:
        return (self.model, self.version, str(self.gguf))


@dataclass
class Piece:
    """What the engine says while generating: text (maybe empty), and at the end the counts."""

    text: str
    tokens: list[int]
    done: bool = False
    finish: str | None = None  # "stop" | "length"
    prompt_tokens: int = 0
    completion_tokens: int | None = None  # at the end: every token generated, the stop token not


class Engine:
    def __init__(
        self,
        servable: Servable,
        sockets: Path,
        logs: Path,
        *,
        slots: int,
        context: int | None,
        threads: int | None,
        queue: int,
        prompt_cache: bool = False,
        flash_attention: bool = False,
    ):
        self.servable = servable
        self.slots, self.requested_context, self.threads = slots, context, threads
        self.prompt_cache = prompt_cache
        self.flash_attention = flash_attention
        self.limit = slots + queue  # requests admitted at once (in a slot or waiting for one)
        self.socket = sockets / f"{abs(hash(servable.key)):x}.sock"
        self.log_path = logs / f"{servable.id.replace(':', '-').replace('/', '_')}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.prompter: Any = None
        self.client: upstream.Client | None = None
        self.in_flight = 0
        self.ready = asyncio.Event()
        self.error: EdgeftError | None = None  # why it failed to start, as the CLI reports it
        self.last_used = time.monotonic()
        self.started = 0.0
        self.stop_ids: set[int] = set()

    @property
    def failed(self) -> str | None:
        """Why it could not start (None while it starts or once it runs)."""
        return None if self.error is None else str(self.error)

    @property
    def context(self) -> int:
        return int(self.prompter.context)

    # ---- lifecycle -------------------------------------------------------------------------

    @staticmethod
    def check_bytes(servable: Servable) -> None:
        """InputError unless the GGUF's sha256 is the one recorded when it was verified."""
        got = sha256_file(servable.gguf)
        if got != servable.sha256:
            raise InputError(
                f"{servable.gguf}: its sha256 is {got[:16]}…, not the verified {servable.sha256[:16]}… "
                f"recorded for {servable.id}: the file changed after it was verified; it is not served "
                f"(rebuild or re-register the dist)"
            )

    def _spawn(self) -> None:
        from edgeft.runtimes.llamacpp import LlamaCppPrompter

        self.check_bytes(self.servable)
        binary = llama_tools.tool("llama-server")
        self.prompter = LlamaCppPrompter(self.servable.gguf, n_ctx=self.requested_context)
        self.stop_ids = set(self.prompter.special_tokens()["stop"])
        self.socket.unlink(missing_ok=True)
        args = [
            str(binary),
            *("-m", str(self.servable.gguf)),
            *("--host", str(self.socket)),
            *("-np", str(self.slots)),
            *("-c", str(self.context * self.slots)),
            "--no-kv-unified",  # each slot holds exactly the context `edgeft run` gives the model
            # llama-server turns flash attention on where it can, llama-cpp-python (edgeft run,
            # verify) does not: its other summation order flips near-tie greedy choices (measured
            # on the micro model: a verify probe's answer differs from its 5th token). Off unless
            # --flash-attn: what is served is what was verified.
            *("-fa", "on" if self.flash_attention else "off"),
            "--no-webui",
            *("-lv", "2"),  # warnings and errors only
            # Threads sleep between steps instead of spinning: the front shares the CPU and relays
            # every token; measured on 2 cores, 0.73x -> 0.84x of bare llama-server at 1 client.
            *("--poll", "0"),
            *llama_tools.no_repack(),
        ]
        if self.threads:
            args += ["-t", str(self.threads)]
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("wb") as out:
            self.proc = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                preexec_fn=die_with_parent,
            )

    def _said(self) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return "no log"
        errors = [line for line in lines if " E " in line or "error" in line.lower()]
        return (errors or lines or ["nothing"])[-1][-300:]

    async def start(self) -> None:
        """Check the bytes, start the child, wait until it answers /health."""
        try:
            self.started = time.monotonic()
            await asyncio.to_thread(self._spawn)
            self.client = upstream.Client(str(self.socket))
            deadline = time.monotonic() + LOAD_TIMEOUT
            while True:
                assert self.proc is not None
                if self.proc.poll() is not None:
                    raise ToolError(
                        f"llama-server exited ({self.proc.returncode}) loading {self.servable.gguf}: "
                        f"{self._said()} (its log: {self.log_path})"
                    )
                if self.socket.exists():
                    try:
                        if await self.client.get_status("/health", timeout=2.0) == 200:
                            break
                    except (upstream.UpstreamError, TimeoutError):
                        pass
                if time.monotonic() > deadline:
                    raise ToolError(f"llama-server did not load {self.servable.gguf} in {LOAD_TIMEOUT:g} s")
                await asyncio.sleep(0.05)
            log.info("%s ready in %.1f s", self.servable.id, time.monotonic() - self.started)
            self.ready.set()
        except Exception as e:
            why = str(e) if not isinstance(e, AssertionError) else "llama-server did not start"
            self.error = e if isinstance(e, EdgeftError) else ToolError(why)
            self.ready.set()
            await self.stop()
            raise

    async def stop(self) -> None:
        self.client = None
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.to_thread(proc.wait, 10)
            except subprocess.TimeoutExpired:
                proc.kill()
                await asyncio.to_thread(proc.wait)
        if self.prompter is not None:
            self.prompter.close()
            self.prompter = None
        self.socket.unlink(missing_ok=True)

    def memory_bytes(self) -> int | None:
        """The child's resident memory (Linux /proc), for the metrics and the benchmark."""
        if self.proc is None:
            return None
        try:
            for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        except OSError:
            return None
        return None

    # ---- generation ------------------------------------------------------------------------

    def body(self, ids: list[int], max_tokens: int, req: Any, stream: bool) -> dict[str, Any]:
        """llama-server's /completion request: the token ids, and sampling as OpenAI defines it
        (temperature, top_p; no top-k, min-p or repetition penalty: llama-server's defaults for
        those would change the distribution the client asked for). Temperature 0 is greedy, and
        then top-k 1: the same token (the first highest logit, as llama.cpp's partial sort and its
        temperature-0 scan both keep), without a softmax over the whole vocabulary for each token
        of each slot (measured on SmolLM2's 49k vocabulary: 5% of bare llama-server's throughput
        at 8 clients)."""
        greedy = req.temperature <= 0
        body: dict[str, Any] = {
            "prompt": ids,
            "n_predict": max_tokens,
            "temperature": req.temperature,
            "top_p": req.top_p,
            "top_k": 1 if greedy else 0,
            "min_p": 0.0,
            "repeat_penalty": 1.0,
            "stream": stream,
            "return_tokens": True,
            # Off by default: a slot's cached prefix changes the shapes the rest of the prompt is
            # computed in, and with them near-tie greedy choices (the same request could answer
            # differently depending on the one before it). Off, a request's answer is `edgeft
            # run`'s. --prompt-cache trades that for speed on long multi-turn prompts.
            "cache_prompt": self.prompt_cache,
        }
        if req.seed is not None:
            body["seed"] = req.seed % (2**32)
        if req.stop:
            body["stop"] = req.stop
        if req.json_schema is not None:
            body["json_schema"] = req.json_schema
        return body

    async def generate(self, ids: list[int], max_tokens: int, req: Any) -> AsyncIterator[Piece]:
        """Stream the reply: text pieces, then one `done` piece with the finish reason."""
        try:
            async for piece in self._pieces(ids, max_tokens, req):
                yield piece
        except upstream.UpstreamError as e:
            raise EngineError(502, str(e)) from None

    async def _pieces(self, ids: list[int], max_tokens: int, req: Any) -> AsyncIterator[Piece]:
        body = self.body(ids, max_tokens, req, True)
        assert self.client is not None
        async with self.client.stream("POST", "/completion", body) as r:
            if r.status_code != 200:
                text = (await r.aread()).decode("utf-8", "replace")
                raise EngineError(r.status_code, _message(text))
            async for line in r.aiter_lines():
                if not line.startswith("data: "):
                    continue
                data = json.loads(line[6:])
                if "error" in data:
                    raise EngineError(500, _message(json.dumps(data)))
                tokens = [t for t in data.get("tokens") or [] if t not in self.stop_ids]
                if data.get("stop"):
                    finish = "length" if data.get("stop_type") == "limit" else "stop"
                    # Chunks carry the tokens of the text they carry: tokens of a character not yet
                    # complete are held back with it, so the count comes from the end, where
                    # llama-server counts the end-of-generation token too.
                    predicted = int(data.get("tokens_predicted") or 0)
                    yield Piece(
                        data.get("content") or "",
                        tokens,
                        done=True,
                        finish=finish,
                        prompt_tokens=int(data.get("tokens_evaluated") or len(ids)),
                        completion_tokens=predicted - (data.get("stop_type") == "eos"),
                    )
                    return
                yield Piece(data.get("content") or "", tokens)
        raise EngineError(502, "llama-server ended the stream without its final message")


class EngineError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def _message(text: str) -> str:
    try:
        data = json.loads(text)
        err = data.get("error")
        return str(err.get("message") if isinstance(err, dict) else err)[:500]
    except (ValueError, AttributeError):
        return text[:500]
