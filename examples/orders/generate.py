"""Generate the bundled tool-calling example: a shop's order assistant with four functions
(seeded, so the file is reproducible).

    python examples/orders/generate.py > examples/orders/data/orders.jsonl
    python examples/orders/generate.py 200 get_order list_orders   # fewer rows, only these tools

Rows are in OpenAI's fine-tuning shape (`tools` beside `messages`; assistant `tool_calls`, `tool`
turns), of three kinds:
- a request the assistant answers with one call (the row ends with the call): 60%;
- a request, its call, the tool's result and the assistant's answer from it: 25%;
- a request no tool serves, answered in words without a call: 15%.
"""

from __future__ import annotations

import json
import random
import sys

SYSTEM = "You are the order assistant of an online shop."
STATUSES = ["open", "shipped", "delivered", "cancelled"]
REASONS = ["damaged", "late", "changed_mind"]
CITIES = ["Paris", "Berlin", "Madrid", "Oslo", "Rome", "Vienna", "Lisbon", "Dublin"]
ORDER = {"type": "string", "pattern": "^A-[0-9]{4}$"}

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_order",
            "description": "Status of one order.",
            "parameters": {"type": "object", "properties": {"order_id": ORDER}, "required": ["order_id"]},
        },
    },
    {
        "type": "function",
        "function": {
            "name": "cancel_order",
            "description": "Cancel an order.",
            "parameters": {
                "type": "object",
                "properties": {"order_id": ORDER, "reason": {"enum": REASONS}},
                "required": ["order_id", "reason"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "list_orders",
            "description": "The customer's orders with a status.",
            "parameters": {
                "type": "object",
                "properties": {
                    "status": {"enum": STATUSES},
                    "limit": {"type": "integer", "minimum": 1, "maximum": 20},
                },
                "required": ["status"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "change_address",
            "description": "Send an order to another city.",
            "parameters": {
                "type": "object",
                "properties": {"order_id": ORDER, "city": {"type": "string"}},
                "required": ["order_id", "city"],
            },
        },
    },
]

# (function, request templates, arguments): {o} order id, {c} city, {s} status, {n} limit, {r} reason
REQUESTS = {
    "get_order": [
        "Where is my order {o}?",
        "What is the status of order {o}?",
        "Has {o} shipped yet?",
        "Can you check order {o} for me?",
        "Any news on {o}?",
    ],
    "cancel_order": [
        "Please cancel order {o}, it arrived {r_text}.",
        "I want to cancel {o} because it is {r_text}.",
        "Cancel {o}: {r_text}.",
    ],
    "list_orders": [
        "Show me my {s} orders.",
        "List my {s} orders, at most {n}.",
        "Which of my orders are {s}?",
        "Give me {n} of my {s} orders.",
    ],
    "change_address": [
        "Send order {o} to {c} instead.",
        "Please change the delivery city of {o} to {c}.",
        "I moved to {c}; can {o} go there?",
    ],
}
REASON_TEXT = {
    "damaged": "damaged",
    "late": "too late",
    "changed_mind": "not needed any more, I changed my mind",
}
ONLY_ORDERS = (
    "I can only help with orders: looking them up, listing, cancelling or changing the delivery city."
)
GREETING = "Hello! I can look up, list, cancel or re-address your orders. What can I do for you?"
ITEMS = ["gift cards", "shoes", "phones", "books", "bikes", "lamps"]
NO_TOOL = [  # (request template, answer): {c} city, {i} item
    ("Hello!", GREETING),
    ("Good morning", GREETING),
    ("Hi, I need help with an order.", "Of course. Which order is it, and what should I do?"),
    ("What are your opening hours in {c}?", ONLY_ORDERS),
    ("Do you sell {i}?", ONLY_ORDERS),
    ("Is there a shop in {c}?", ONLY_ORDERS),
    ("How much do {i} cost?", ONLY_ORDERS),
    ("Thanks, that is all.", "You are welcome. Have a nice day!"),
]


def _request(fn: str, rng: random.Random) -> tuple[str, dict]:
    o = f"A-{rng.randrange(1000, 10000)}"
    c, s, n, r = rng.choice(CITIES), rng.choice(STATUSES), rng.randrange(2, 11), rng.choice(REASONS)
    template = rng.choice(REQUESTS[fn])
    text = template.format(o=o, c=c, s=s, n=n, r_text=REASON_TEXT[r])
    args = {
        "get_order": {"order_id": o},
        "cancel_order": {"order_id": o, "reason": r},
        "list_orders": {"status": s} | ({"limit": n} if "{n}" in template else {}),
        "change_address": {"order_id": o, "city": c},
    }[fn]
    return text, args


def _result(fn: str, args: dict, rng: random.Random) -> tuple[dict, str]:
    """A plausible result of the call and the assistant's answer from it."""
    if fn == "get_order":
        status, day = rng.choice(STATUSES), rng.randrange(1, 29)
        return {"order_id": args["order_id"], "status": status, "day": day}, (
            f"Order {args['order_id']} is {status} (updated on day {day})."
        )
    if fn == "cancel_order":
        return {"ok": True}, f"Order {args['order_id']} is cancelled."
    if fn == "list_orders":
        ids = [f"A-{rng.randrange(1000, 10000)}" for _ in range(rng.randrange(0, 4))]
        listed = ", ".join(ids) if ids else "none"
        return {"orders": ids}, f"Your {args['status']} orders: {listed}."
    return {"ok": True}, f"Order {args['order_id']} will go to {args['city']}."


def row(i: int, rng: random.Random) -> dict:
    kind = rng.random()
    if kind < 0.15:
        q, a = rng.choice(NO_TOOL)
        q = q.format(c=rng.choice(CITIES), i=rng.choice(ITEMS))
        return {
            "system": SYSTEM,
            "tools": TOOLS,
            "messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}],
        }
    fn = rng.choice(list(REQUESTS))
    text, args = _request(fn, rng)
    cid = "call_1"
    messages = [
        {"role": "user", "content": text},
        {
            "role": "assistant",
            "tool_calls": [
                {"id": cid, "type": "function", "function": {"name": fn, "arguments": json.dumps(args)}}
            ],
        },
    ]
    if kind < 0.40:
        result, answer = _result(fn, args, rng)
        messages += [
            {"role": "tool", "tool_call_id": cid, "content": json.dumps(result)},
            {"role": "assistant", "content": answer},
        ]
    return {"system": SYSTEM, "tools": TOOLS, "messages": messages}


def main(n: int = 400, seed: int = 5, functions: tuple[str, ...] | None = None) -> None:
    """`n` rows; `functions` keeps only those tools (the tiny-model test's shorter prompt)."""
    global TOOLS, REQUESTS
    if functions:
        TOOLS = [t for t in TOOLS if t["function"]["name"] in functions]
        REQUESTS = {k: v for k, v in REQUESTS.items() if k in functions}
    rng = random.Random(seed)
    seen: set[str] = set()
    i = 0
    while len(seen) < n:
        r = row(i, rng)
        key = json.dumps(r["messages"])
        if key not in seen:  # no exact duplicates (data check warns about them)
            seen.add(key)
            print(json.dumps(r))
        i += 1


if __name__ == "__main__":
    main(int(sys.argv[1]) if sys.argv[1:] else 400, functions=tuple(sys.argv[2:]) or None)
