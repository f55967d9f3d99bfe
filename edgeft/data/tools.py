"""Tool calls: OpenAI-shaped rows checked, rendered as the text every runtime's template takes, and
read back from a model's answer.

A row with tools is a chat row as OpenAI's fine-tuning format writes it:

    {"tools": [{"type": "function", "function": {"name": "get_order", "description": "...",
                "parameters": {JSON schema}}}],
     "messages": [{"role": "user", "content": "Where is order A-1042?"},
                  {"role": "assistant", "tool_calls": [{"id": "c1", "type": "function",
                   "function": {"name": "get_order", "arguments": "{\\"order_id\\": \\"A-1042\\"}"}}]},
                  {"role": "tool", "tool_call_id": "c1", "content": "{\\"status\\": \\"shipped\\"}"},
                  {"role": "assistant", "content": "It has shipped."}]}

Checked with a location (`tools[1].function.parameters`, `messages[1].tool_calls[0]`): each tool's
definition (a name, a valid JSON schema), each call against its tool (an unknown function,
arguments that are not a JSON object, an argument the schema rejects, a missing required one), and
the order of turns (a `tool` turn answers the calls of the assistant turn before it).

**The format (`FORMAT`).** Neither real model edgeft is measured on (SmolLM2's template, Gemma 3's)
renders `tools`, and templates that do (Qwen2.5, Llama 3.1) each render them their own way, with
`tojson` filters that differ between the Jinja engines a consumer uses (Python's HTML-escapes,
llama.cpp's and the JS engine's do not). So edgeft renders tool turns as plain text *before* the
template, in one documented format, the widely trained "Hermes" layout:

- the system turn gets the tool definitions, one JSON object per line, between `<tools>` and
  `</tools>`, and how to call them (a system turn is added when the row has none);
- an assistant turn's calls follow its content, each `{"name": ..., "arguments": {...}}` between
  `<tool_call>` and `</tool_call>`;
- a run of `tool` turns becomes one user turn, each result between `<tool_response>` and
  `</tool_response>`, in the order of the calls.

Every consumer then renders plain system/user/assistant messages with the model's own template,
which verify already proves identical in each runtime; the served endpoint renders a request's
`tools` with this same module, and parses the reply back into OpenAI's `tool_calls`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

FORMAT = "edgeft-tools/1"  # what a manifest records for a model trained on tool rows

HEADER = "Functions you can call, one JSON object per line:"
HOW = (
    'To call one, answer <tool_call>\n{"name": <name>, "arguments": <object>}\n</tool_call>, one block '
    "per call. Results come back in <tool_response>."
)
CALL_OPEN, CALL_CLOSE = "<tool_call>", "</tool_call>"
RESULT_OPEN, RESULT_CLOSE = "<tool_response>", "</tool_response>"
_CALL = re.compile(re.escape(CALL_OPEN) + r"(.*?)(?:" + re.escape(CALL_CLOSE) + r"|\Z)", re.DOTALL)


class BadTools(ValueError):
    """A row or request that is wrong: where (a path into it) and what."""

    def __init__(self, where: str, message: str, check: str = "tools"):
        super().__init__(f"{where}: {message}")
        self.where, self.message, self.check = where, message, check


@dataclass(frozen=True)
class Call:
    name: str
    arguments: Any  # a dict when well-formed (parse keeps what the model wrote otherwise)
    id: str | None = None

    def key(self) -> str:
        """The call as compared: name and arguments, JSON with sorted keys."""
        return json.dumps([self.name, self.arguments], sort_keys=True, ensure_ascii=False)

    def text(self) -> str:
        return json.dumps({"name": self.name, "arguments": self.arguments}, ensure_ascii=False)


# --- checking --------------------------------------------------------------------------------


def specs(value: Any, where: str = "tools") -> dict[str, dict[str, Any]]:
    """A row's or request's `tools`, checked: function name → its definition (name, description?,
    parameters?). Raises BadTools naming the first wrong field."""
    import jsonschema

    if not isinstance(value, list) or not value:
        raise BadTools(where, 'expected a non-empty list of {"type": "function", "function": {...}}')
    out: dict[str, dict[str, Any]] = {}
    for i, tool in enumerate(value):
        at = f"{where}[{i}]"
        if not isinstance(tool, dict) or tool.get("type", "function") != "function":
            raise BadTools(at, 'expected {"type": "function", "function": {name, description, parameters}}')
        fn = tool.get("function")
        if not isinstance(fn, dict):
            raise BadTools(f"{at}.function", "missing (an object with name, description and parameters)")
        name = fn.get("name")
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", name):
            raise BadTools(f"{at}.function.name", "expected a name of letters, digits, _ . - (at most 64)")
        if name in out:
            raise BadTools(f"{at}.function.name", f"{name!r} is defined twice")
        if not isinstance(fn.get("description", ""), str):
            raise BadTools(f"{at}.function.description", "expected a string")
        params = fn.get("parameters", {"type": "object", "properties": {}})
        if not isinstance(params, dict):
            raise BadTools(f"{at}.function.parameters", "expected a JSON schema object")
        try:
            jsonschema.Draft202012Validator.check_schema(params)
        except jsonschema.SchemaError as e:
            raise BadTools(f"{at}.function.parameters", f"not a valid JSON schema ({e.message})") from None
        remote = _remote_ref(params)
        if remote is not None:
            raise BadTools(
                f"{at}.function.parameters",
                f"$ref {remote!r} points outside the schema; edgeft never fetches schemas: "
                f"use references inside it (#/$defs/...)",
            )
        out[name] = {k: fn[k] for k in ("name", "description", "parameters") if k in fn}
    return out


def validator(schema: dict[str, Any]) -> Any:
    """A JSON-schema validator that resolves `$ref` only inside the schema: jsonschema's default
    fetches a remote reference over the network, which a data check must never do. An
    unresolvable reference raises referencing.exceptions.Unresolvable when it is reached."""
    import jsonschema
    import referencing

    return jsonschema.Draft202012Validator(schema, registry=referencing.Registry())


def _remote_ref(schema: Any) -> str | None:
    """The first `$ref` that does not point inside the schema (not starting with #), or None."""
    if isinstance(schema, dict):
        ref = schema.get("$ref")
        if isinstance(ref, str) and not ref.startswith("#"):
            return ref
        values = list(schema.values())
    elif isinstance(schema, list):
        values = schema
    else:
        return None
    for v in values:
        found = _remote_ref(v)
        if found is not None:
            return found
    return None


def invalid(call: Call, tools: dict[str, dict[str, Any]]) -> str | None:
    """Why a call does not fit its tools (an unknown function, arguments the schema rejects), or None."""
    import jsonschema
    import referencing.exceptions

    fn = tools.get(call.name)
    if fn is None:
        return f"unknown function {call.name!r} (defined: {', '.join(tools)})"
    if not isinstance(call.arguments, dict):
        return f"{call.name}: arguments must be a JSON object"
    schema = fn.get("parameters") or {}
    try:
        error = jsonschema.exceptions.best_match(validator(schema).iter_errors(call.arguments))
    except referencing.exceptions.Unresolvable as e:
        return (
            f"{call.name}: its parameters schema has a $ref edgeft cannot resolve ({e}); "
            f"use references inside the schema (#/$defs/...)"
        )
    if error is None:
        return None
    path = "".join(f"[{p!r}]" if isinstance(p, str) else f"[{p}]" for p in error.absolute_path)
    return f"{call.name}: arguments{path} {error.message}"


def _call(value: Any, where: str) -> Call:
    if not isinstance(value, dict) or value.get("type", "function") != "function":
        raise BadTools(where, 'expected {"id", "type": "function", "function": {"name", "arguments"}}')
    fn = value.get("function")
    if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
        raise BadTools(f"{where}.function", "expected an object with a name and arguments")
    args = fn.get("arguments", {})
    if isinstance(args, str):
        try:
            args = json.loads(args) if args.strip() else {}
        except json.JSONDecodeError as e:
            raise BadTools(f"{where}.function.arguments", f"not valid JSON ({e.msg})") from None
    if not isinstance(args, dict):
        raise BadTools(f"{where}.function.arguments", "must be a JSON object")
    cid = value.get("id")
    return Call(fn["name"], args, cid if isinstance(cid, str) else None)


def rendered(row: dict[str, Any]) -> bool:
    """Whether a row's turns are already in edgeft's tool format (`tool_format` names it: the
    served log's rows and edgeft's own split files), its `tools` given for eval and the record."""
    return row.get("tool_format") == FORMAT


def has_tools(row: dict[str, Any], messages: Any) -> bool:
    """Whether a chat row uses tools to render (a `tools` list, a tool call or a tool turn)."""
    if rendered(row):
        return False
    if row.get("tools") not in (None, []):
        return True
    return isinstance(messages, list) and any(
        isinstance(m, dict) and (m.get("role") == "tool" or m.get("tool_calls")) for m in messages
    )


def conversation(
    messages: list[dict[str, Any]],
    tools: dict[str, dict[str, Any]],
    strict: bool = True,
    describe: bool = True,
) -> list[dict[str, str]]:
    """OpenAI-shaped messages with tool calls and tool turns → plain system/user/assistant turns in
    edgeft's format, the tools described in the system turn (unless not `describe`: a request whose
    tool_choice is "none"). `strict` (data rows) also checks each call's arguments against its
    schema; a request's history is taken as the client wrote it."""
    out: list[dict[str, str]] = []
    pending: list[Call] = []  # the calls of the last assistant turn that tool turns answer
    results: list[str] = []
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        role = m.get("role")
        if role != "tool" and results:
            out.append({"role": "user", "content": render_results(results)})
            results = []
        if role == "tool":
            if not pending:
                raise BadTools(where, "a tool turn must follow an assistant turn with tool_calls", "roles")
            content = m.get("content")
            if not isinstance(content, str):
                raise BadTools(f"{where}.content", "expected the tool's result as a string")
            cid = m.get("tool_call_id")
            if cid is not None and cid not in {c.id for c in pending if c.id}:
                raise BadTools(f"{where}.tool_call_id", f"{cid!r} names no call of the turn before")
            results.append(content)
            continue
        if role == "assistant" and m.get("tool_calls"):
            raw = m["tool_calls"]
            if not isinstance(raw, list):
                raise BadTools(f"{where}.tool_calls", "expected a list of calls")
            calls = [_call(c, f"{where}.tool_calls[{j}]") for j, c in enumerate(raw)]
            for j, c in enumerate(calls):
                problem = invalid(c, tools)
                if problem and (strict or c.name not in tools):
                    raise BadTools(f"{where}.tool_calls[{j}]", problem, "tool_call")
            content = m.get("content") or ""
            if not isinstance(content, str):
                raise BadTools(f"{where}.content", "expected a string or null")
            out.append({"role": "assistant", "content": render_calls(content, calls)})
            pending = calls
            continue
        if role not in ("system", "user", "assistant") or not isinstance(m.get("content"), str):
            raise BadTools(
                where, 'expected {"role": system|user|assistant|tool, "content": string}', "format"
            )
        pending = []
        out.append({"role": role, "content": m["content"]})
    if results:
        out.append({"role": "user", "content": render_results(results)})
    return with_tools(out, tools) if describe else out


# --- rendering -------------------------------------------------------------------------------


def openai_tools(tools: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Tools by name back in OpenAI's `tools` shape (what `specs` reads)."""
    return [{"type": "function", "function": fn} for fn in tools.values()]


def definition_line(fn: dict[str, Any]) -> str:
    """One tool's definition as the system turn lists it (and the Java kit's tools.jsonl holds it)."""
    return json.dumps(fn, ensure_ascii=False)


def system_block(tools: dict[str, dict[str, Any]]) -> str:
    lines = "\n".join(definition_line(fn) for fn in tools.values())
    return f"{HEADER}\n<tools>\n{lines}\n</tools>\n{HOW}"


def with_tools(messages: list[dict[str, str]], tools: dict[str, dict[str, Any]]) -> list[dict[str, str]]:
    """The conversation with the tool definitions in its system turn (added first if it has none)."""
    block = system_block(tools)
    if messages and messages[0]["role"] == "system" and messages[0]["content"].strip():
        return [{"role": "system", "content": f"{messages[0]['content']}\n\n{block}"}, *messages[1:]]
    rest = messages[1:] if messages and messages[0]["role"] == "system" else messages
    return [{"role": "system", "content": block}, *rest]


def render_calls(content: str, calls: list[Call]) -> str:
    blocks = "\n".join(f"{CALL_OPEN}\n{c.text()}\n{CALL_CLOSE}" for c in calls)
    return f"{content.strip()}\n{blocks}" if content.strip() else blocks


def render_results(results: list[str]) -> str:
    return "\n".join(f"{RESULT_OPEN}\n{r}\n{RESULT_CLOSE}" for r in results)


# --- reading an answer -----------------------------------------------------------------------


@dataclass(frozen=True)
class Parsed:
    content: str  # the answer without its call blocks
    calls: list[Call]
    problems: list[str]  # blocks that are not a {"name", "arguments"} object (the model's fault)

    def same_calls(self, other: Parsed) -> bool:
        """The same calls as `other`: each function with arguments equal as JSON, in any order."""
        return sorted(c.key() for c in self.calls) == sorted(c.key() for c in other.calls)


def parse(text: str) -> Parsed:
    """A model's answer in edgeft's format: its text, and each `<tool_call>` block as a Call."""
    calls: list[Call] = []
    problems: list[str] = []
    for n, m in enumerate(_CALL.finditer(text)):
        body = m.group(1).strip()
        try:
            value = json.loads(body)
        except json.JSONDecodeError as e:
            problems.append(f"call {n + 1}: not valid JSON ({e.msg})")
            continue
        if not isinstance(value, dict) or not isinstance(value.get("name"), str):
            problems.append(f'call {n + 1}: not a {{"name", "arguments"}} object')
            continue
        calls.append(Call(value["name"], value.get("arguments", {})))
    return Parsed(_CALL.sub("", text).strip(), calls, problems)


def starts_call(text: str) -> int:
    """Where in `text` a call block begins, or may begin once more text arrives (the start of
    `<tool_call>` at its end); len(text) when it cannot. What a stream may send before holding back."""
    at = text.find(CALL_OPEN)
    if at >= 0:
        return at
    for k in range(min(len(CALL_OPEN) - 1, len(text)), 0, -1):
        if text.endswith(CALL_OPEN[:k]):
            return len(text) - k
    return len(text)


def agrees(answer: str, reference: str, tools: dict[str, dict[str, Any]] | None) -> bool:
    """Tool-call accuracy of one answer: the same calls as the reference (none, or each function
    with arguments equal as JSON, in any order), each valid against its tool's schema."""
    got = parse(answer)
    if got.problems or not got.same_calls(parse(reference)):
        return False
    return not tools or all(invalid(c, tools) is None for c in got.calls)
