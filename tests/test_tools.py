"""Tool rows (edgeft.data.tools): checked with a location, rendered in edgeft's format before the
template, read back from an answer, scored as tool-call accuracy, and what the served endpoint
accepts and answers."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgeft.cli import cli
from edgeft.data import tools
from edgeft.data.augment import with_typos
from edgeft.data.rows import load_examples, to_example
from edgeft.pipeline.evaluate import Checks, right, score
from edgeft.serve.protocol import ApiError, ToolStream, message, parse_chat

ROOT = Path(__file__).resolve().parents[1]
ORDERS = ROOT / "examples" / "orders" / "data" / "orders.jsonl"
# Two of the bundled example's four tools (examples/orders/generate.py): get_order, list_orders.
TOOLS = [
    t
    for t in json.loads(ORDERS.read_text().splitlines()[0])["tools"]
    if t["function"]["name"] in ("get_order", "list_orders")
]


def _call(name: str, args: str, cid: str = "c1") -> dict:
    return {"id": cid, "type": "function", "function": {"name": name, "arguments": args}}


ROW = {
    "tools": TOOLS,
    "messages": [
        {"role": "user", "content": "Where is order A-1042?"},
        {"role": "assistant", "content": None, "tool_calls": [_call("get_order", '{"order_id": "A-1042"}')]},
        {"role": "tool", "tool_call_id": "c1", "content": '{"status": "shipped"}'},
        {"role": "assistant", "content": "It has shipped."},
    ],
}


def test_a_tool_row_renders_as_plain_turns_with_the_tools_in_the_system_turn() -> None:
    ex, problem, _ = to_example(ROW, system_prompt="You are the order assistant.")
    assert problem is None and ex is not None
    assert [m["role"] for m in ex.messages] == ["system", "user", "assistant", "user", "assistant"]
    system = ex.messages[0]["content"]
    # The row's system prompt first, then the definitions, one JSON object per line.
    assert system.startswith("You are the order assistant.\n\n" + tools.HEADER)
    assert json.dumps(tools.specs(TOOLS)["get_order"]) in system.splitlines()
    assert (
        ex.messages[2]["content"]
        == '<tool_call>\n{"name": "get_order", "arguments": {"order_id": "A-1042"}}\n</tool_call>'
    )
    assert ex.messages[3]["content"] == '<tool_response>\n{"status": "shipped"}\n</tool_response>'
    assert (
        set(ex.tools) == {"get_order", "list_orders"}
        and ex.to_json()["tools"][0]["function"]["name"] == "get_order"
    )
    # A row without a system turn gets one holding only the tools.
    bare, _, _ = to_example(ROW)
    assert bare is not None and bare.messages[0]["content"].startswith(tools.HEADER)


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (
            lambda r: r["messages"][1]["tool_calls"][0]["function"].update(name="cancel"),
            "unknown function 'cancel'",
        ),
        (
            lambda r: r["messages"][1]["tool_calls"][0]["function"].update(arguments="{}"),
            "'order_id' is a required property",
        ),
        (
            lambda r: r["messages"][1]["tool_calls"][0]["function"].update(arguments="{oops"),
            "arguments: not valid JSON",
        ),
        (
            lambda r: r["messages"][1]["tool_calls"][0]["function"].update(arguments='{"order_id": "B7"}'),
            "does not match",
        ),
        (
            lambda r: r["messages"][1]["tool_calls"][0]["function"].update(arguments="[1]"),
            "must be a JSON object",
        ),
        (
            lambda r: r["tools"][0]["function"]["parameters"].update(type="nonsense"),
            "tools[0].function.parameters: not a valid JSON schema",
        ),
        (lambda r: r["tools"].append(copy.deepcopy(r["tools"][0])), "'get_order' is defined twice"),
        # jsonschema would fetch a remote $ref over the network: refused, never fetched
        (
            lambda r: r["tools"][0]["function"]["parameters"]["properties"].update(
                x={"$ref": "https://example.com/s"}
            ),
            "points outside the schema",
        ),
        (
            lambda r: r["tools"][0]["function"]["parameters"]["properties"].update(
                order_id={"$ref": "#/$defs/none"}
            ),
            "a $ref edgeft cannot resolve",
        ),
        (lambda r: r.pop("tools"), "tools: missing"),
        (
            lambda r: r["messages"].pop(1),
            "messages[1]: a tool turn must follow an assistant turn with tool_calls",
        ),
        (lambda r: r["messages"][2].update(tool_call_id="c9"), "'c9' names no call"),
    ],
)
def test_each_broken_tool_row_is_refused_with_where_and_why(edit, expected: str) -> None:
    row = copy.deepcopy(ROW)
    edit(row)
    ex, problem, _ = to_example(row)
    assert ex is None and problem is not None and expected in problem, problem


def test_data_check_locates_a_bad_call_at_its_line(tmp_path: Path) -> None:
    rows = [json.loads(line) for line in ORDERS.read_text().splitlines()[:30]]
    calls = next(i for i, r in enumerate(rows) if r["messages"][1].get("tool_calls"))
    rows[calls]["messages"][1]["tool_calls"][0]["function"]["name"] = "refund"
    path = tmp_path / "orders.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = CliRunner().invoke(cli, ["data", "check", str(path)])
    assert result.exit_code != 0
    assert result.exit_code == 4  # a data error (docs/cli.md)
    line = next(x for x in result.output.splitlines() if "refund" in x)
    assert (
        f"orders.jsonl:{calls + 1} " in line
        and "messages[1].tool_calls[0]: unknown function 'refund'" in line
    )


def test_data_check_counts_tool_rows_functions_and_calls() -> None:
    result = CliRunner().invoke(cli, ["data", "check", str(ORDERS)])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in ORDERS.read_text().splitlines()]
    calls = sum(len(m.get("tool_calls") or []) for r in rows for m in r["messages"])
    assert f"(400 chat; 400 with tools: 4 functions, {calls} calls)" in result.output


def test_the_bundled_orders_file_is_clean_and_typos_never_touch_a_tools_result() -> None:
    report = load_examples(ORDERS, system_prompt=None)
    assert not report.problems and len(report.examples) == 400
    assert all(e.tools for e in report.examples)
    added, _ = with_typos(report.examples[:40], copies=1, rate=0.5, seed=0)
    for copy_ in added:
        for m in copy_.messages:
            if m["role"] == "user" and m["content"].startswith(tools.RESULT_OPEN):
                original = next(e for e in report.examples if e.where == copy_.source)
                assert m in original.messages


def test_parse_reads_calls_back_and_agrees_compares_them_as_json() -> None:
    specs = tools.specs(TOOLS)
    ref = '<tool_call>\n{"name": "list_orders", "arguments": {"status": "open", "limit": 3}}\n</tool_call>'
    parsed = tools.parse("Let me look.\n" + ref)
    assert parsed.content == "Let me look." and parsed.calls[0].arguments == {"status": "open", "limit": 3}
    # Key order and spacing do not matter; values, names and validity do.
    assert tools.agrees(
        '<tool_call>{"arguments":{"limit":3,"status":"open"},"name":"list_orders"}</tool_call>', ref, specs
    )
    assert not tools.agrees(ref.replace("3", "4"), ref, specs)
    assert not tools.agrees("The open orders are ...", ref, specs)
    assert not tools.agrees("<tool_call>\n{broken\n</tool_call>", ref, specs)
    wrong = '<tool_call>{"name": "list_orders", "arguments": {"status": "lost"}}</tool_call>'
    assert not tools.agrees(wrong, wrong, specs)  # the reference's own call, but not valid against the schema
    assert tools.agrees("Sure.", "Hello!", specs)  # no call where none is due is right
    # An unfinished block (generation cut off) is a problem, not a call.
    assert tools.parse('<tool_call>\n{"name": "get_order", "argu').problems


def test_starts_call_holds_back_only_what_may_begin_a_call() -> None:
    assert tools.starts_call("Hello there") == len("Hello there")
    assert tools.starts_call("Sure <tool") == len("Sure ")
    assert tools.starts_call("x<tool_call>{") == 1
    assert tools.starts_call("a < b") == len("a < b")


def test_tool_call_accuracy_is_a_paired_binary_metric_beside_exact_match() -> None:
    specs = tools.specs(TOOLS)
    call = '<tool_call>\n{"name": "get_order", "arguments": {"order_id": "A-1042"}}\n</tool_call>'
    refs = [call, "Hello!"]
    outs = ['<tool_call>{"name": "get_order", "arguments": {"order_id": "A-1042"}}</tool_call>', "Hi"]
    checks = Checks(None, [specs, specs])
    assert right(outs, refs, checks) == {"exact_match": [False, False], "tool_call": [True, True]}
    assert score(outs, refs, checks)["tool_call"] == 1.0
    assert "tool_call" not in score(outs, refs, Checks())


def _body(**extra) -> dict:
    return {
        "model": "m",
        "messages": [{"role": "user", "content": "Where is A-1042?"}],
        "tools": TOOLS,
    } | extra


def test_a_request_with_tools_renders_as_training_did() -> None:
    req = parse_chat(_body(messages=copy.deepcopy(ROW["messages"][:3])))
    ex, _, _ = to_example({"tools": TOOLS, "messages": ROW["messages"]})
    assert ex is not None and req.call_tools and set(req.tools or {}) == {"get_order", "list_orders"}
    assert req.messages == ex.messages[:4]  # the prompt a served request renders is the training rows'
    none = parse_chat(_body(tool_choice="none"))
    assert not none.call_tools and tools.HEADER not in json.dumps(none.messages)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (_body(tool_choice="required"), "tool_choice"),
        (_body(tool_choice={"type": "function", "function": {"name": "get_order"}}), "tool_choice"),
        (_body(functions=[{"name": "f"}]), "functions"),
        (_body(tools=[{"type": "function", "function": {"name": "bad name"}}]), "tools[0].function.name"),
        (
            {"model": "m", "messages": [{"role": "user", "content": "x"}, {"role": "tool", "content": "1"}]},
            "messages[1]",
        ),
        (
            _body(messages=[{"role": "user", "content": "x"}, {"role": "tool", "content": "1"}]),
            "messages[1]",
        ),
    ],
)
def test_tool_requests_the_server_cannot_honour_get_a_400_naming_the_field(body: dict, param: str) -> None:
    with pytest.raises(ApiError) as e:
        parse_chat(body)
    assert e.value.status == 400 and e.value.param == param, e.value.message


def test_a_reply_with_calls_is_openai_shaped() -> None:
    parsed = tools.parse(
        '<tool_call>\n{"name": "get_order", "arguments": {"order_id": "A-1042"}}\n</tool_call>'
    )
    msg = message(parsed.content, parsed.calls, ["call_1"])
    assert msg["content"] is None
    assert msg["tool_calls"] == [
        {
            "id": "call_1",
            "type": "function",
            "function": {"name": "get_order", "arguments": '{"order_id": "A-1042"}'},
        }
    ]


def _streamed(pieces: list[str]) -> tuple[list[dict], str]:
    stream = ToolStream(lambda n: [f"call_{i}" for i in range(n)])
    deltas = [d for p in pieces for d in stream.feed(p)]
    last, finish = stream.end("stop")
    return deltas + last, finish


def test_a_streamed_reply_sends_text_at_once_and_calls_as_one_delta_at_the_end() -> None:
    reply = (
        'Let me check.\n<tool_call>\n{"name": "get_order", "arguments": {"order_id": "A-1042"}}\n</tool_call>'
    )
    pieces = [reply[i : i + 3] for i in range(0, len(reply), 3)]  # cut anywhere, inside the tag too
    deltas, finish = _streamed(pieces)
    text = "".join(d.get("content", "") for d in deltas)
    assert text.strip() == "Let me check." and "<tool" not in text
    assert finish == "tool_calls"
    assert deltas[-1] == {
        "tool_calls": [
            {
                "index": 0,
                "id": "call_0",
                "type": "function",
                "function": {"name": "get_order", "arguments": '{"order_id": "A-1042"}'},
            }
        ]
    }
    # Plain text streams through whole, a lone "<" included, and finishes as it finished.
    deltas, finish = _streamed(["1 < 2", " and <to", "day>"])
    assert "".join(d["content"] for d in deltas) == "1 < 2 and <today>" and finish == "stop"
    # A block the model never closes is text, not a call.
    deltas, finish = _streamed(['<tool_call>\n{"name": "get_'])
    assert finish == "stop" and "".join(d["content"] for d in deltas).startswith("<tool_call>")


def test_run_takes_tools_as_an_openai_array_or_a_dists_tools_jsonl(tmp_path: Path) -> None:
    from edgeft.cli.run import read_tools

    array = tmp_path / "tools.json"
    array.write_text(json.dumps(TOOLS))
    lines = tmp_path / "tools.jsonl"
    lines.write_text("".join(tools.definition_line(t["function"]) + "\n" for t in TOOLS))
    assert read_tools(array) == read_tools(lines) == tools.specs(TOOLS)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"name": "f"}\n{oops\n')
    result = CliRunner().invoke(cli, ["run", str(tmp_path / "none.gguf"), "hi", "--tools", str(bad)])
    assert result.exit_code == 5 and f"{bad}:2: not JSON" in result.output
    bad.write_text('{"name": "f", "parameters": {"type": 5}}\n')
    result = CliRunner().invoke(cli, ["run", str(tmp_path / "none.gguf"), "hi", "--tools", str(bad)])
    assert result.exit_code == 5 and "tools[0].function.parameters: not a valid JSON schema" in result.output


def test_rendered_rows_read_back_as_the_same_example_and_the_served_log_keeps_its_tools(
    tmp_path: Path,
) -> None:
    from edgeft.data import served

    ex, _, _ = to_example(ROW, system_prompt="You are the order assistant.")
    assert ex is not None
    again, problem, _ = to_example(ex.to_json())  # a split file's row (tool_format marks it rendered)
    assert problem is None and again is not None
    assert again.messages == ex.messages and again.tools == ex.tools
    # A tools request logged by `edgeft serve`: read back as a tool row, not rendered twice.
    req = parse_chat(_body(messages=copy.deepcopy(ROW["messages"][:3])))
    log = tmp_path / "served"
    log.mkdir()
    (log / served.MARKER).write_text("")
    record = {
        "type": "completion",
        "id": "chatcmpl-1",
        "status": "ok",
        "messages": req.messages,
        "tools": [{"type": "function", "function": fn} for fn in (req.tools or {}).values()],
        "reply": "It has shipped.",
    }
    (log / served.CURRENT).write_text(json.dumps(record) + "\n")
    report = load_examples(log)
    assert not report.problems and len(report.examples) == 1
    got = report.examples[0]
    bare, _, _ = to_example(ROW)  # the request had no system turn
    assert bare is not None
    assert got.messages == bare.messages[:4] + [{"role": "assistant", "content": "It has shipped."}]
    assert got.tools == tools.specs(TOOLS) and got.messages[0]["content"].count(tools.HEADER) == 1
