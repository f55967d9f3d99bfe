"""Write edgeft/ship/javakit/routing-vectors.json: the A/B routing test vectors every implementation
(edgeft.registry.store in Python, the Java kit's Registry.java) must reproduce.

    .venv/bin/python scripts/routing_vectors.py     # only when the vectors are meant to change (never, once shipped)
"""

from __future__ import annotations

import json
from pathlib import Path

from edgeft.registry.index import BUCKETS, Split
from edgeft.registry.routing import assign, bucket

OUT = Path(__file__).resolve().parent.parent / "edgeft" / "ship" / "javakit" / "routing-vectors.json"
KEYS = [
    "",
    "0",
    "1",
    "request-1",
    "request-2",
    "user:42",
    "550e8400-e29b-41d4-a716-446655440000",
    "Ünïcødé-ключ-鍵",
    "a" * 200,
    "trailing space ",
    "tab\tkey",
    "emoji-\U0001f680",
]
SPLITS = [
    {
        "id": "nl2sql/1",
        "arms": [
            {"label": "production", "version": 1, "weight": 9000},
            {"label": "candidate", "version": 2, "weight": 1000},
        ],
    },
    {
        "id": "nl2sql/1",
        "arms": [
            {"label": "production", "version": 1, "weight": 8000},
            {"label": "candidate", "version": 2, "weight": 2000},
        ],
    },
    {
        "id": "chat-model/7",
        "arms": [
            {"label": "production", "version": 3, "weight": 5000},
            {"label": "4", "version": 4, "weight": 2550},
            {"label": "candidate", "version": 6, "weight": 2450},
        ],
    },
]


def main() -> None:
    vectors = {
        "hash": "bucket = first 8 bytes of SHA-256(UTF-8(split_id + ':' + key)) as a big-endian unsigned "
        f"integer, modulo {BUCKETS}; the first arm (in order) whose cumulative weight exceeds the "
        "bucket serves the request",
        "buckets": BUCKETS,
        "bucket": [
            {"split_id": s, "key": k, "bucket": bucket(s, k)}
            for s in ("nl2sql/1", "chat-model/7", "")
            for k in KEYS
        ],
        "splits": [
            {
                **split,
                "routes": [
                    {"key": k, "version": assign(Split.from_json(split).arms, bucket(split["id"], k)).version}
                    for k in [*KEYS, *(f"req-{i}" for i in range(40))]
                ],
            }
            for split in SPLITS
        ],
    }
    OUT.write_text(json.dumps(vectors, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(OUT)


if __name__ == "__main__":
    main()
