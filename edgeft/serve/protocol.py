"""The OpenAI chat-completions protocol as `edgeft serve` speaks it: a request checked field by
field (what real clients send is accepted; an unknown field, an unsupported feature or a bad value
is a 400 naming the field, never a 500 and never silently ignored), and the response objects and
stream chunks built in OpenAI's shapes.

Accepted (null is the same as absent, as the clients' serialisers omit or send it):
  model, messages (system / developer / user / assistant; content a string or text parts),
  temperature, top_p, seed, stop (a string or up to 4), max_tokens, max_completion_tokens,
  response_format {"type": "text" | "json_object" | "json_schema"}, user, stream,
  stream_options {"include_usage"}, n (1 only), and the sampling and reporting fields whose
  neutral value changes nothing (presence_penalty 0, frequency_penalty 0, logprobs false,
  parallel_tool_calls, store false, metadata, service_tier "auto"/"default", logit_bias {}).
  `tools` (function definitions), `tool_choice` "auto" / "none", assistant turns with
  `tool_calls` and `tool` turns, for a model trained on tool rows: rendered in edgeft's tool format
  (edgeft.data.tools) and the reply read back into `tool_calls`; for any other model a 400 that says
  it was not trained for tool calls. The legacy `functions` / `function_call` get a 400 naming `tools`.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from typing import Any

MAX_STOP = 4
ROLES = ("system", "developer", "user", "assistant")


class ApiError(Exception):
    """An OpenAI-style error answer: HTTP status, message, the offending field (`param`)."""

    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        kind: str = "invalid_request_error",
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.param, self.kind, self.code = status, message, param, kind, code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


def bad(param: str, message: str, code: str = "invalid_value") -> ApiError:
    return ApiError(400, f"{param}: {message}", param=param, code=code)


@dataclass
class ChatRequest:
    model: str
    messages: list[dict[str, str]]
    max_tokens: int | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    json_schema: dict[str, Any] | None = None  # a grammar for the reply (json_object: any object)
    user: str | None = None
    stream: bool = False
    include_usage: bool = False
    tools: dict[str, dict[str, Any]] | None = None  # the request's tools by name (edgeft.data.tools)
    call_tools: bool = False  # read the reply's tool calls back (tools given, tool_choice "auto")


# field -> the values that change nothing (accepted, then ignored); anything else is refused.
NEUTRAL: dict[str, tuple[Any, ...]] = {
    "presence_penalty": (0, 0.0),
    "frequency_penalty": (0, 0.0),
    "logprobs": (False,),
    "store": (False,),
    "service_tier": ("auto", "default"),
}
IGNORED = {"metadata", "parallel_tool_calls"}  # bookkeeping that does not change an answer
KNOWN = {
    "model",
    "messages",
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "top_p",
    "seed",
    "stop",
    "response_format",
    "user",
    "stream",
    "stream_options",
    "n",
    "logit_bias",
    "top_logprobs",
    "tools",
    "tool_choice",
    "functions",
    "function_call",
    *NEUTRAL,
    *IGNORED,
}


def _number(body: dict[str, Any], name: str, lo: float, hi: float, default: float) -> float:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise bad(name, f"expected a number, got {json.dumps(value)[:60]}")
    if not lo <= value <= hi:
        raise bad(name, f"{value} is outside [{lo:g}, {hi:g}]")
    return float(value)


def _integer(body: dict[str, Any], name: str, lo: int, hi: int | None = None) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise bad(name, f"expected an integer, got {json.dumps(value)[:60]}")
    if value < lo or (hi is not None and value > hi):
        raise bad(name, f"{value} is outside [{lo}, {hi if hi is not None else '∞'}]")
    return value


def _content(value: Any, where: str) -> str:
    """A message's content: a string, or OpenAI's list of text parts (joined)."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        texts = []
        for i, part in enumerate(value):
            if (
                not isinstance(part, dict)
                or part.get("type") != "text"
                or not isinstance(part.get("text"), str)
            ):
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise bad(
                    f"{where}.content[{i}]",
                    f"only text parts are supported (got {kind!r}); this model reads text",
                    "unsupported_content",
                )
            texts.append(part["text"])
        return "".join(texts)
    raise bad(f"{where}.content", "expected a string or a list of text parts")


def _messages(value: Any, tools: dict[str, dict[str, Any]] | None, describe: bool) -> list[dict[str, str]]:
    """The conversation as plain turns; with `tools`, tool calls and tool turns rendered in edgeft's
    tool format, and the tools described in the system turn when `describe` (tool_choice "auto")."""
    from edgeft.data import tools as tools_mod

    if not isinstance(value, list) or not value:
        raise bad("messages", "expected a non-empty list of messages")
    out: list[dict[str, Any]] = []
    for i, m in enumerate(value):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise bad(where, "expected an object with role and content")
        role = m.get("role")
        tooling = role in ("tool", "function") or m.get("tool_calls") or m.get("function_call")
        if tooling and (tools is None or role == "function" or m.get("function_call")):
            raise bad(
                where,
                "tool calls and tool results need the request's `tools` (and a model trained for tool calls)"
                if tools is None
                else "the legacy function role and function_call are not supported; use tool_calls and tool turns",
                "unsupported_feature",
            )
        if role not in (*ROLES, "tool"):
            raise bad(
                f"{where}.role", f"expected one of {', '.join(ROLES)}, tool; got {json.dumps(role)[:40]}"
            )
        allowed = {"role", "content", "name"} | (
            {"tool_calls"} if role == "assistant" else {"tool_call_id"} if role == "tool" else set()
        )
        unknown = sorted(set(m) - allowed)
        if unknown:
            raise bad(f"{where}.{unknown[0]}", "unknown message field", "unknown_parameter")
        if m.get("content") is None and not m.get("tool_calls"):
            raise bad(f"{where}.content", "missing")
        # OpenAI's `developer` role is the newer name of `system` (what chat templates know).
        turn: dict[str, Any] = {
            "role": "system" if role == "developer" else role,
            "content": _content(m["content"], where) if m.get("content") is not None else "",
        }
        for k in ("tool_calls", "tool_call_id"):
            if m.get(k) is not None:
                turn[k] = m[k]
        out.append(turn)
    if tools is None:
        return out
    try:
        return tools_mod.conversation(out, tools, strict=False, describe=describe)
    except tools_mod.BadTools as e:
        raise bad(e.where, e.message) from None


def _tools(body: dict[str, Any]) -> tuple[dict[str, dict[str, Any]] | None, bool]:
    """(the request's tools by name, or None; whether the tools are offered: tool_choice "auto")."""
    from edgeft.data import tools as tools_mod

    for name in ("functions", "function_call"):
        if body.get(name) is not None:
            raise bad(
                name, "the legacy function-calling fields are not supported; use tools", "unsupported_feature"
            )
    choice = body.get("tool_choice")
    if body.get("tools") in (None, []):
        if choice not in (None, "none", "auto"):
            raise bad("tool_choice", "names a tool choice without `tools`")
        return None, False
    try:
        defined = tools_mod.specs(body["tools"])
    except tools_mod.BadTools as e:
        raise bad(e.where, e.message) from None
    if choice not in (None, "auto", "none"):
        raise bad(
            "tool_choice",
            'only "auto" and "none" are supported (a model decides itself whether to call a tool)',
            "unsupported_value",
        )
    return defined, choice != "none"


def _response_format(value: Any) -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise bad("response_format", 'expected an object such as {"type": "json_object"}')
    kind = value.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "object"}
    if kind == "json_schema":
        spec = value.get("json_schema")
        if not isinstance(spec, dict) or not isinstance(spec.get("schema"), dict):
            raise bad("response_format.json_schema.schema", "expected a JSON schema object")
        return spec["schema"]
    raise bad(
        "response_format.type", f"expected text, json_object or json_schema, got {json.dumps(kind)[:40]}"
    )


def parse_chat(body: Any) -> ChatRequest:
    """The request, checked; ApiError(400) naming the first field that is wrong."""
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object")
    unknown = sorted(k for k in body if k not in KNOWN)
    if unknown:
        raise bad(
            unknown[0],
            "unknown field (edgeft serve does not ignore fields it does not know)",
            "unknown_parameter",
        )
    tools, offered = _tools(body)
    for name, neutral in NEUTRAL.items():
        value = body.get(name)
        if value is not None and value not in neutral:
            raise bad(
                name, f"only {neutral[0]!r} is supported (got {json.dumps(value)[:40]})", "unsupported_value"
            )
    if body.get("logit_bias") not in (None, {}):
        raise bad("logit_bias", "not supported", "unsupported_value")
    if body.get("top_logprobs") not in (None, 0):
        raise bad("top_logprobs", "log-probabilities are not returned", "unsupported_value")
    n = _integer(body, "n", 1)
    if n not in (None, 1):
        raise bad("n", "only one choice per request (n = 1) is supported", "unsupported_value")
    model = body.get("model")
    if not isinstance(model, str) or not model.strip():
        raise bad("model", "missing (GET /v1/models lists what this server serves)")
    max_tokens = _integer(body, "max_completion_tokens", 1)
    older = _integer(body, "max_tokens", 1)
    if max_tokens is not None and older is not None and max_tokens != older:
        raise bad("max_tokens", "differs from max_completion_tokens; send one of them")
    stop = body.get("stop")
    if stop is None:
        stops: list[str] = []
    elif isinstance(stop, str):
        stops = [stop]
    elif isinstance(stop, list) and all(isinstance(s, str) for s in stop) and len(stop) <= MAX_STOP:
        stops = list(stop)
    else:
        raise bad("stop", f"expected a string or a list of at most {MAX_STOP} strings")
    if any(not s for s in stops):
        raise bad("stop", "an empty stop string would end every reply at once")
    options = body.get("stream_options")
    if options is not None and (not isinstance(options, dict) or set(options) - {"include_usage"}):
        raise bad("stream_options", "only include_usage is supported")
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise bad("stream", "expected true or false")
    user = body.get("user")
    if user is not None and not isinstance(user, str):
        raise bad("user", "expected a string")
    seed = _integer(body, "seed", -(2**63), 2**64 - 1)
    return ChatRequest(
        model=model.strip(),
        messages=_messages(body.get("messages"), tools, offered),
        max_tokens=max_tokens if max_tokens is not None else older,
        temperature=_number(body, "temperature", 0.0, 2.0, 1.0),
        top_p=_number(body, "top_p", 0.0, 1.0, 1.0),
        seed=seed,
        stop=stops,
        json_schema=_response_format(body.get("response_format")),
        user=user or None,
        stream=bool(stream),
        include_usage=bool((options or {}).get("include_usage")),
        tools=tools,
        call_tools=offered,
    )


# ---- answers -----------------------------------------------------------------------------------


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def tool_calls(calls: list[Any], ids: list[str], streamed: bool = False) -> list[dict[str, Any]]:
    """edgeft.data.tools Calls in OpenAI's shape (arguments as JSON text); `streamed`: as stream
    deltas, each with its index."""
    return [
        ({"index": i} if streamed else {})
        | {
            "id": cid,
            "type": "function",
            "function": {"name": c.name, "arguments": json.dumps(c.arguments, ensure_ascii=False)},
        }
        for i, (c, cid) in enumerate(zip(calls, ids, strict=True))
    ]


class ToolStream:
    """A streamed reply to a request that offered tools: its text is sent as content deltas as it
    comes, except what may begin a `<tool_call>` block, which is held back; once a block begins,
    the rest waits for the end, where the calls go out as one `tool_calls` delta (OpenAI's stream
    shape, each call with its index) and the finish reason becomes "tool_calls"."""

    def __init__(self, new_ids: Any) -> None:
        self.text = ""
        self.sent = 0  # how much of the text went out as content
        self.new_ids = new_ids  # n → n fresh call ids

    def feed(self, piece: str) -> list[dict[str, Any]]:
        """The deltas to send for one more piece of the reply."""
        from edgeft.data.tools import starts_call

        self.text += piece
        upto = starts_call(self.text)
        if upto <= self.sent:
            return []
        out, self.sent = [{"content": self.text[self.sent : upto]}], upto
        return out

    def end(self, finish: str) -> tuple[list[dict[str, Any]], str]:
        """The last deltas and the finish reason, once the reply is complete."""
        from edgeft.data.tools import parse

        rest = self.text[self.sent :]
        parsed = parse(rest)
        if not parsed.calls:
            return ([{"content": rest}] if rest else []), finish
        out = [{"content": parsed.content}] if parsed.content else []
        calls = tool_calls(parsed.calls, self.new_ids(len(parsed.calls)), streamed=True)
        return [*out, {"tool_calls": calls}], "tool_calls"


def message(text: str, calls: list[Any] | None, ids: list[str] | None) -> dict[str, Any]:
    """The reply as a message: its text, or, when it called tools, their calls (content null when
    the reply is only calls, as OpenAI sends it)."""
    if not calls or ids is None:
        return {"role": "assistant", "content": text, "refusal": None}
    return {
        "role": "assistant",
        "content": text or None,
        "refusal": None,
        "tool_calls": tool_calls(calls, ids),
    }


def read_back(text: str, finish: str, new_ids: Any = None) -> tuple[dict[str, Any] | None, str]:
    """A whole reply's message and finish reason. With `new_ids` (n → n fresh call ids: a request
    that offered tools), a reply with call blocks is their `tool_calls` and finishes "tool_calls";
    otherwise (None, finish): the plain text message."""
    from edgeft.data.tools import parse

    if new_ids is not None:
        parsed = parse(text)
        if parsed.calls:
            return message(parsed.content, parsed.calls, new_ids(len(parsed.calls))), "tool_calls"
    return None, finish


def completion(
    cid: str,
    model: str,
    text: str,
    finish: str,
    prompt_tokens: int,
    completion_tokens: int,
    fingerprint: str,
    reply: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "id": cid,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": fingerprint,
        "choices": [
            {
                "index": 0,
                "message": reply or {"role": "assistant", "content": text, "refusal": None},
                "logprobs": None,
                "finish_reason": finish,
            }
        ],
        "usage": usage(prompt_tokens, completion_tokens),
    }


def chunk(
    cid: str,
    model: str,
    fingerprint: str,
    delta: dict[str, Any] | None,
    finish: str | None = None,
    use: dict[str, int] | None = None,
    created: int | None = None,
) -> dict[str, Any]:
    """One stream chunk: a delta (with its finish reason), or, with `use`, the usage chunk
    (no choices) that stream_options.include_usage asks for."""
    out: dict[str, Any] = {
        "id": cid,
        "object": "chat.completion.chunk",
        "created": created or int(time.time()),
        "model": model,
        "system_fingerprint": fingerprint,
        "choices": []
        if delta is None
        else [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }
    if use is not None:
        out["usage"] = use
    return out


def sse(data: dict[str, Any] | str) -> bytes:
    text = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return f"data: {text}\n\n".encode()
