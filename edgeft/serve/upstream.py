"""HTTP/1.1 to a llama-server child over its unix socket: h11's state machine on asyncio streams.

The front relays every generated token, so the cost of reading one SSE event is paid for each
token of each answer, on the same cores as llama.cpp's compute threads. httpx (anyio, httpcore,
its response models) spent about a third of the front's CPU there; this client is the one layer
the job needs: a request out, the response's status, then its body as lines as they arrive.

One connection per request, closed at the end (llama-server closes a connection after a streamed
answer without saying so, so a kept-alive one would fail on its next request). Closing the
connection early (a client that left) is what tells llama-server to free the slot.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from types import TracebackType
from typing import Any

import h11

READ_SIZE = 1 << 16


class UpstreamError(Exception):
    """The child could not be reached, or broke the protocol (closed mid-answer, a bad response)."""


class Response:
    """One request's response: `status_code` once open, then the body, whole or as lines."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, conn: h11.Connection):
        self._reader, self._writer, self._conn = reader, writer, conn
        self.status_code = 0
        self._eof = False

    async def _event(self) -> Any:
        while True:
            try:
                event = self._conn.next_event()
            except h11.RemoteProtocolError as e:
                if self._eof:
                    raise UpstreamError(f"llama-server closed the connection mid-answer ({e})") from None
                raise UpstreamError(f"llama-server's response is not HTTP/1.1: {e}") from None
            if event is not h11.NEED_DATA:
                return event
            try:
                data = await self._reader.read(READ_SIZE)
            except OSError as e:
                raise UpstreamError(f"llama-server's connection failed: {e}") from None
            self._eof = not data
            self._conn.receive_data(data)  # b"" says the connection closed

    async def _start(self) -> None:
        event = await self._event()
        while isinstance(event, h11.InformationalResponse):
            event = await self._event()
        if not isinstance(event, h11.Response):
            raise UpstreamError("llama-server closed the connection before answering")
        self.status_code = event.status_code

    async def aiter_bytes(self) -> AsyncIterator[bytes]:
        while True:
            event = await self._event()
            if isinstance(event, h11.Data):
                yield bytes(event.data)
            elif isinstance(event, h11.EndOfMessage):
                return
            else:  # ConnectionClosed: the body ended early
                raise UpstreamError("llama-server closed the connection mid-answer")

    async def aiter_lines(self) -> AsyncIterator[str]:
        """The body's lines as they complete (SSE events are `data: {...}` lines)."""
        pending = b""
        async for data in self.aiter_bytes():
            pending += data
            if b"\n" not in pending:
                continue
            *lines, pending = pending.split(b"\n")
            for line in lines:
                yield line.rstrip(b"\r").decode("utf-8", "replace")
        if pending:
            yield pending.decode("utf-8", "replace")

    async def aread(self) -> bytes:
        return b"".join([part async for part in self.aiter_bytes()])

    def close(self) -> None:
        self._writer.close()


class _Exchange:
    """`async with client.stream(...) as response`: the connection lives as long as the block."""

    def __init__(self, socket: str, method: str, target: str, body: bytes | None):
        self.socket, self.method, self.target, self.body = socket, method, target, body
        self.response: Response | None = None

    async def __aenter__(self) -> Response:
        try:
            reader, writer = await asyncio.open_unix_connection(self.socket, limit=READ_SIZE)
        except OSError as e:
            raise UpstreamError(f"cannot reach llama-server at {self.socket}: {e.strerror or e}") from None
        conn = h11.Connection(our_role=h11.CLIENT)
        headers = [("Host", "llama-server"), ("Connection", "close")]
        body = self.body or b""
        if self.body is not None:
            headers += [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
        out = conn.send(h11.Request(method=self.method, target=self.target, headers=headers)) or b""
        if body:
            out += conn.send(h11.Data(data=body)) or b""
        out += conn.send(h11.EndOfMessage()) or b""
        self.response = Response(reader, writer, conn)
        try:
            writer.write(out)
            await writer.drain()
            await self.response._start()
        except BaseException as e:
            self.response.close()
            if isinstance(e, OSError):
                raise UpstreamError(f"llama-server's connection failed: {e}") from None
            raise
        return self.response

    async def __aexit__(
        self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.response is not None:
            self.response.close()


class Client:
    """Requests to the llama-server listening on `socket` (a unix socket's path)."""

    def __init__(self, socket: str):
        self.socket = socket

    def stream(self, method: str, target: str, json_body: Any = None) -> _Exchange:
        body = None if json_body is None else json.dumps(json_body, separators=(",", ":")).encode()
        return _Exchange(self.socket, method, target, body)

    async def get_status(self, target: str, timeout: float) -> int:
        """The status of a GET (the body is read and dropped)."""
        async with asyncio.timeout(timeout), self.stream("GET", target) as r:
            await r.aread()
            return r.status_code
