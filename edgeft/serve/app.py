"""The HTTP side of `edgeft serve`: an ASGI app (Starlette) on uvicorn, in front of one llama-server
child per loaded version (edgeft.serve.engine), routing each request with the registry
(edgeft.serve.catalog), logging it (edgeft.serve.journal) and counting it (Prometheus).

    POST /v1/chat/completions   OpenAI's chat completions, streaming (SSE) or not
    GET  /v1/models             every servable id
    POST /v1/feedback           {id, rating 1-5, correction?} for a logged completion
    GET  /health                200 when every routed version is loaded, 503 while loading
    GET  /metrics               Prometheus text

Response headers name what answered: X-Edgeft-Version (`nl2sql-tiny:3`), X-Edgeft-Variant (the
split's arm, the alias, `pinned` or `dist`) and X-Edgeft-Routing (`key`: the X-Edgeft-Key header,
`user`: the OpenAI `user` field, `no-key`: neither, so production answered; `pinned`, `fixed`).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import signal
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from starlette.responses import StreamingResponse

from edgeft.core.errors import InputError
from edgeft.data.tools import FORMAT as TOOL_FORMAT
from edgeft.data.tools import openai_tools
from edgeft.serve import journal as journal_mod
from edgeft.serve.catalog import Catalog, Route
from edgeft.serve.engine import EngineError
from edgeft.serve.protocol import (
    ApiError,
    ChatRequest,
    ToolStream,
    chunk,
    completion,
    parse_chat,
    read_back,
    sse,
    usage,
)

log = logging.getLogger(__name__)

KEY_HEADER = "x-edgeft-key"
RETRY_AFTER = "1"
MAX_CORRECTION = 100_000


@dataclass
class Limits:
    max_body: int = 1 << 20  # bytes of a request body
    api_key: str | None = None


class Metrics:
    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        labels = ["version", "variant"]
        self.requests = Counter(
            "edgeft_requests",
            "Chat completions answered, by outcome",
            [*labels, "status"],
            registry=self.registry,
        )
        self.errors = Counter(
            "edgeft_errors", "Requests refused or failed, by code", ["code"], registry=self.registry
        )
        self.tokens = Counter(
            "edgeft_tokens", "Tokens, by kind (prompt, completion)", [*labels, "kind"], registry=self.registry
        )
        buckets = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
        self.ttft = Histogram(
            "edgeft_time_to_first_token_seconds",
            "Time to the first token",
            labels,
            buckets=buckets,
            registry=self.registry,
        )
        self.latency = Histogram(
            "edgeft_request_seconds",
            "Time to the whole answer",
            labels,
            buckets=buckets,
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "edgeft_in_flight", "Requests being answered", ["version"], registry=self.registry
        )
        self.memory = Gauge(
            "edgeft_engine_resident_bytes",
            "Resident memory of each loaded version's llama-server",
            ["version"],
            registry=self.registry,
        )

    def text(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)


def error_response(e: ApiError) -> Any:
    from starlette.responses import JSONResponse

    return JSONResponse(e.body(), status_code=e.status, headers=e.headers)


class Service:
    def __init__(self, catalog: Catalog, journal: journal_mod.Journal, limits: Limits):
        self.catalog, self.journal, self.limits = catalog, journal, limits
        self.metrics = Metrics()
        self.loaded = asyncio.Event()
        self.load_error: BaseException | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        self.shutdown: Any = None  # set by the runner: asks uvicorn to stop

    # ---- lifecycle -------------------------------------------------------------------------

    async def startup(self) -> None:
        async def load() -> None:
            try:
                await self.catalog.load_all()
                self.loaded.set()
                log.warning("edgeft serve: ready (%s)", ", ".join(self.catalog.model_ids()))
            except BaseException as e:
                self.load_error = e
                if self.shutdown:
                    self.shutdown()

        self._tasks = [asyncio.create_task(load()), asyncio.create_task(self.catalog.watch())]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.catalog.close()
        self.journal.close()

    def app(self) -> Any:
        import contextlib

        from starlette.applications import Starlette
        from starlette.routing import Route as Path_

        @contextlib.asynccontextmanager
        async def lifespan(app: Any) -> AsyncIterator[None]:
            await self.startup()
            try:
                yield
            finally:
                await self.close()

        return Starlette(
            routes=[
                Path_("/v1/chat/completions", self.chat, methods=["POST"]),
                Path_("/v1/models", self.models, methods=["GET"]),
                Path_("/v1/feedback", self.feedback, methods=["POST"]),
                Path_("/health", self.health, methods=["GET"]),
                Path_("/metrics", self.metrics_page, methods=["GET"]),
            ],
            lifespan=lifespan,
        )

    # ---- plumbing --------------------------------------------------------------------------

    def _authorise(self, request: Any) -> None:
        key = self.limits.api_key
        if not key:
            return
        given = request.headers.get("authorization", "")
        scheme, _, token = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), key.encode()):
            raise ApiError(
                401,
                "missing or wrong API key (Authorization: Bearer KEY)",
                kind="invalid_request_error",
                code="invalid_api_key",
            )

    async def _json(self, request: Any) -> Any:
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > self.limits.max_body:
            raise ApiError(
                413, f"the request body is over {self.limits.max_body:,} bytes", code="request_too_large"
            )
        body = bytearray()
        async for part in request.stream():
            body += part
            if len(body) > self.limits.max_body:
                raise ApiError(
                    413, f"the request body is over {self.limits.max_body:,} bytes", code="request_too_large"
                )
        try:
            return json.loads(body)
        except (ValueError, RecursionError):
            raise ApiError(400, "the request body is not JSON", code="invalid_json") from None

    async def _guarded(self, request: Any, handler: Any) -> Any:
        try:
            self._authorise(request)
            return await handler(request)
        except ApiError as e:
            self.metrics.errors.labels(e.code or str(e.status)).inc()
            return error_response(e)

    # ---- endpoints -------------------------------------------------------------------------

    async def health(self, request: Any) -> Any:
        from starlette.responses import JSONResponse

        loading = self.catalog.loading()
        if not self.loaded.is_set() or loading:
            return JSONResponse({"status": "loading", "loading": loading}, status_code=503)
        versions = sorted(
            {e.servable.id for e in self.catalog.engines.values() if e.ready.is_set() and not e.failed}
        )
        return JSONResponse({"status": "ok", "versions": versions})

    async def metrics_page(self, request: Any) -> Any:
        from prometheus_client import CONTENT_TYPE_LATEST
        from starlette.responses import Response

        for engine in self.catalog.engines.values():
            rss = engine.memory_bytes()
            if rss is not None:
                self.metrics.memory.labels(engine.servable.id).set(rss)
        return Response(self.metrics.text(), media_type=CONTENT_TYPE_LATEST)

    async def models(self, request: Any) -> Any:
        async def handler(request: Any) -> Any:
            from starlette.responses import JSONResponse

            now = int(time.time())
            data = [
                {"id": i, "object": "model", "created": now, "owned_by": "edgeft"}
                for i in self.catalog.model_ids()
            ]
            return JSONResponse({"object": "list", "data": data})

        return await self._guarded(request, handler)

    async def feedback(self, request: Any) -> Any:
        async def handler(request: Any) -> Any:
            from starlette.responses import JSONResponse

            body = await self._json(request)
            if not isinstance(body, dict):
                raise ApiError(400, "expected {id, rating, correction?}")
            unknown = sorted(set(body) - {"id", "rating", "correction"})
            if unknown:
                raise ApiError(
                    400, f"{unknown[0]}: unknown field", param=unknown[0], code="unknown_parameter"
                )
            cid, rating, correction = body.get("id"), body.get("rating"), body.get("correction")
            if not isinstance(cid, str) or not cid.startswith("chatcmpl-") or len(cid) > 100:
                raise ApiError(400, "id: expected the id of a completion (chatcmpl-…)", param="id")
            if isinstance(rating, bool) or not isinstance(rating, int) or not 1 <= rating <= 5:
                raise ApiError(400, "rating: expected an integer from 1 (bad) to 5 (good)", param="rating")
            if correction is not None and (
                not isinstance(correction, str) or len(correction) > MAX_CORRECTION
            ):
                raise ApiError(
                    400,
                    f"correction: expected a string of at most {MAX_CORRECTION:,} characters",
                    param="correction",
                )
            await asyncio.to_thread(self.journal.feedback, cid, rating, correction)
            return JSONResponse({"id": cid, "recorded": True})

        return await self._guarded(request, handler)

    async def chat(self, request: Any) -> Any:
        return await self._guarded(request, self._chat)

    async def _chat(self, request: Any) -> Any:
        from starlette.responses import JSONResponse

        started = time.perf_counter()
        req = parse_chat(await self._json(request))
        key, routed_by = request.headers.get(KEY_HEADER), "key"
        if not key and req.user:
            key, routed_by = req.user, "user"
        route = await self.catalog.route(req.model, key or None, routed_by)
        if req.tools is not None and route.servable.tool_format != TOOL_FORMAT:
            raise ApiError(
                400,
                f"tools: {route.servable.id} was not trained for tool calls (its dist records no "
                f"{TOOL_FORMAT} training); send the request without tools",
                param="tools",
                code="unsupported_feature",
            )
        engine = route.engine
        if engine.in_flight >= engine.limit:
            raise ApiError(
                429,
                f"{route.servable.id} is busy ({engine.in_flight} requests in progress or queued); retry shortly",
                kind="rate_limit_error",
                code="overloaded",
                headers={"Retry-After": RETRY_AFTER},
            )
        engine.in_flight += 1  # before any await: an engine in use is never retired under a request
        self.metrics.in_flight.labels(route.servable.id).inc()
        try:
            ids, max_tokens = await self._prompt(route, req)
        except BaseException:
            engine.in_flight -= 1
            self.metrics.in_flight.labels(route.servable.id).dec()
            raise
        cid = "chatcmpl-" + uuid.uuid4().hex
        headers = {
            "X-Edgeft-Version": route.servable.id,
            "X-Edgeft-Variant": route.variant,
            "X-Edgeft-Routing": route.routed_by if route.routed_by != "none" else "no-key",
            "X-Request-Id": cid,
        }
        record: dict[str, Any] = {
            "id": cid,
            "model": req.model,
            "version": route.servable.id,
            "variant": route.variant,
            "split": route.split,
            "bucket": route.bucket,
            "routed_by": headers["X-Edgeft-Routing"],
            "key": journal_mod.key_hash(key) if key else None,
            "messages": req.messages,
            # A tools request: its tools, so the log read back as data is a tool row (edgeft.data.served).
            **({"tools": openai_tools(req.tools)} if req.tools and req.call_tools else {}),
        }
        run = _Run(self, route, req, record, started, len(ids))
        if req.stream:
            return _Streaming(
                run,
                run.stream(ids, max_tokens, cid),
                media_type="text/event-stream",
                headers={**headers, "Cache-Control": "no-cache"},
            )
        try:
            text = await run.collect(ids, max_tokens)
        except ApiError:
            raise
        finally:
            run.finish()
        reply, finish = read_back(text, run.finish_reason or "stop", _call_ids if req.call_tools else None)
        body = completion(
            cid, route.servable.id, text, finish, len(ids), run.completion_tokens, _fingerprint(route), reply
        )
        return JSONResponse(body, headers=headers)

    async def _prompt(self, route: Route, req: ChatRequest) -> tuple[list[int], int]:
        engine = route.engine
        try:
            ids = await asyncio.to_thread(engine.prompter.prompt_ids, req.messages, req.max_tokens or 1)
        except InputError as e:
            param = "max_tokens" if req.max_tokens and "new tokens were asked for" in str(e) else "messages"
            raise ApiError(400, f"{param}: {e}", param=param, code="context_length_exceeded") from None
        except LookupError as e:  # no chat template
            raise ApiError(
                400, f"{route.servable.id}: {e}; it cannot answer chat completions", param="model"
            ) from None
        room = engine.context - len(ids)
        if room < 1:
            raise ApiError(
                400,
                f"messages: the prompt is {len(ids):,} tokens, the whole {engine.context:,}-token context",
                param="messages",
                code="context_length_exceeded",
            )
        return ids, req.max_tokens or room


def _call_ids(n: int) -> list[str]:
    return ["call_" + uuid.uuid4().hex[:24] for _ in range(n)]


def _fingerprint(route: Route) -> str:
    return "edgeft-" + route.servable.sha256[:12]


class _Run:
    """One completion in flight: generation, its log record and metrics, however it ends."""

    def __init__(
        self,
        service: Service,
        route: Route,
        req: ChatRequest,
        record: dict[str, Any],
        started: float,
        prompt_tokens: int,
    ):
        self.service, self.route, self.req, self.record = service, route, req, record
        self.started, self.prompt_tokens = started, prompt_tokens
        self.first: float | None = None
        self.completion_tokens = 0
        self.finish_reason: str | None = None
        self.status = "error"
        self.parts: list[str] = []
        self.finished = False

    async def pieces(self, ids: list[int], max_tokens: int) -> AsyncIterator[str]:
        try:
            async for piece in self.route.engine.generate(ids, max_tokens, self.req):
                if self.first is None:
                    self.first = time.perf_counter()
                self.completion_tokens += len(piece.tokens)
                if piece.text:
                    self.parts.append(piece.text)
                    yield piece.text
                if piece.done:
                    self.finish_reason = piece.finish
                    if piece.completion_tokens is not None:
                        self.completion_tokens = piece.completion_tokens
            self.status = "ok"
        except EngineError as e:
            raise ApiError(
                502 if e.status >= 500 else 400,
                f"the engine refused: {e}",
                kind="server_error",
                code="engine_error",
            ) from None

    async def collect(self, ids: list[int], max_tokens: int) -> str:
        async for _ in self.pieces(ids, max_tokens):
            pass
        return "".join(self.parts)

    async def stream(self, ids: list[int], max_tokens: int, cid: str) -> AsyncIterator[bytes]:
        model, fp, created = self.route.servable.id, _fingerprint(self.route), int(time.time())
        self.status = "disconnected"
        try:
            yield sse(chunk(cid, model, fp, {"role": "assistant", "content": ""}, created=created))
            tools = ToolStream(_call_ids) if self.req.call_tools else None
            try:
                async for text in self.pieces(ids, max_tokens):
                    for delta in tools.feed(text) if tools else [{"content": text}]:
                        yield sse(chunk(cid, model, fp, delta, created=created))
            except ApiError as e:
                self.status = "error"
                yield sse(e.body())
                return
            finish = self.finish_reason or "stop"
            if tools:
                last, finish = tools.end(finish)
                for delta in last:
                    yield sse(chunk(cid, model, fp, delta, created=created))
            yield sse(chunk(cid, model, fp, {}, finish, created=created))
            if self.req.include_usage:
                yield sse(
                    chunk(
                        cid,
                        model,
                        fp,
                        None,
                        use=usage(self.prompt_tokens, self.completion_tokens),
                        created=created,
                    )
                )
            yield sse("[DONE]")
        finally:
            self.finish()

    def finish(self) -> None:
        """Count and log the request, once, however it ended."""
        if self.finished:
            return
        self.finished = True
        engine = self.route.engine
        engine.in_flight -= 1
        m = self.service.metrics
        version, variant = self.route.servable.id, self.route.variant
        m.in_flight.labels(version).dec()
        now = time.perf_counter()
        m.requests.labels(version, variant, self.status).inc()
        if self.status == "ok":
            m.tokens.labels(version, variant, "prompt").inc(self.prompt_tokens)
            m.tokens.labels(version, variant, "completion").inc(self.completion_tokens)
            m.latency.labels(version, variant).observe(now - self.started)
            if self.first is not None:
                m.ttft.labels(version, variant).observe(self.first - self.started)
        self.record.update(
            {
                "reply": "".join(self.parts),
                "finish_reason": self.finish_reason,
                "prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens,
                "ttft_ms": round((self.first - self.started) * 1000, 1) if self.first else None,
                "latency_ms": round((now - self.started) * 1000, 1),
                "status": self.status,
            }
        )
        try:
            self.service.journal.completion(self.record)
        except OSError as e:  # a full disk must not take the answer down with it
            log.error("the served log could not be written: %s", e)


class _Streaming(StreamingResponse):
    """A streamed answer whose run is finished even when the client left before the body began
    (the generator's own `finally` never runs then)."""

    def __init__(self, run: _Run, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._run = run

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            if not self._run.finished:
                self._run.status = "disconnected"
                self._run.finish()


def bind(host: str, port: int) -> Any:
    """The listening socket (bound here, so a taken port is an Error naming it, not a traceback)."""
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise InputError(
            f"cannot listen on {host}:{port} ({e.strerror}); pass another --port or --host"
        ) from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


class _Stop(Exception):
    pass


def _stopped(signum: int, frame: Any) -> None:
    raise _Stop


def serve_forever(service: Service, sock: Any, drain_seconds: float, announce: Any) -> None:
    """Run uvicorn on `sock` until Ctrl-C / SIGTERM (in-flight requests drain for up to
    `drain_seconds`, then the children stop); re-raise a failure to load the versions."""
    import uvicorn

    config = uvicorn.Config(
        service.app(),
        log_level="warning",
        timeout_graceful_shutdown=max(1, round(drain_seconds)),
        access_log=False,
        lifespan="on",
        # h11, never httptools (uvicorn's choice when it is installed): with httptools a request
        # offering an HTTP/2 upgrade (`Upgrade: h2c`, what every JDK HttpClient sends by default,
        # so LangChain4j's and Spring AI's too) reaches the app without its body (uvicorn#2722).
        http="h11",
    )
    server = uvicorn.Server(config)

    def stop() -> None:
        server.should_exit = True

    service.shutdown = stop
    host, port = sock.getsockname()[:2]
    announce(f"http://{host if ':' not in host else f'[{host}]'}:{port}")
    # uvicorn drains on SIGINT / SIGTERM, then raises the signal again for the handler it found:
    # ours ends the run normally (exit 0 after a clean drain), not as "Aborted!" or killed.
    previous = {sig: signal.signal(sig, _stopped) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        server.run(sockets=[sock])
    except _Stop:
        pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if service.load_error is not None:
        raise service.load_error


RUNTIME_PREFIX = "edgeft-serve"


def runtime_dir() -> Path:
    """A private folder for the children's sockets, named as edgeft's scratch folders are, so a
    killed server's is removed by the next (fileio.clean_stale)."""
    import tempfile

    from edgeft.core.fileio import clean_stale, scratch_prefix

    base = Path(tempfile.gettempdir())
    clean_stale(base, f".{RUNTIME_PREFIX}.")
    path = Path(tempfile.mkdtemp(prefix=scratch_prefix(RUNTIME_PREFIX), dir=base))
    path.chmod(0o700)
    return path
