"""Which version serves: references to versions (`NAME`, `NAME:VERSION`, `NAME@ALIAS`) and the
A/B split's assignment of a request key to an arm.

Routing (the same in every language; the Java kit's Registry.java does exactly this, and both pass
edgeft/ship/javakit/routing-vectors.json): bucket = the first 8 bytes of SHA-256 of the UTF-8 bytes of
`split_id + ":" + request_key`, read as a big-endian unsigned integer, modulo 10000; the arms are
walked in order and the first whose cumulative weight (in basis points) exceeds the bucket serves
the request. Changing only the weights keeps the split id, so with production first, growing the
candidate from 10% to 20% keeps every key that was on the candidate there.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from edgeft.core.errors import InputError
from edgeft.registry.index import BUCKETS, Arm

_REF = re.compile(r"^(?P<name>[^:@]+)(?::v?(?P<version>\d+)|@(?P<alias>[A-Za-z_-]+))?$")


def bucket(split_id: str, key: str) -> int:
    """The request's bucket in [0, 10000): see the module docstring."""
    digest = hashlib.sha256(f"{split_id}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % BUCKETS


def assign(arms: list[Arm], b: int) -> Arm:
    """The arm serving bucket `b`: arms in order, cumulative weights in basis points (sum 10000)."""
    total = 0
    for arm in arms:
        total += arm.weight
        if b < total:
            return arm
    raise ValueError(f"weights sum to {total}, not {BUCKETS}")


@dataclass(frozen=True)
class Ref:
    """`NAME`, `NAME:VERSION` (also `NAME:vVERSION`) or `NAME@ALIAS`."""

    name: str
    version: int | None = None
    alias: str | None = None

    @classmethod
    def parse(cls, text: str) -> Ref:
        m = _REF.match(text.strip())
        if not m:
            raise InputError(
                f"{text!r}: expected NAME, NAME:VERSION or NAME@ALIAS (e.g. nl2sql:3, nl2sql@production)"
            )
        version = m.group("version")
        return cls(m.group("name"), int(version) if version else None, m.group("alias"))

    def __str__(self) -> str:
        return self.name + (f":{self.version}" if self.version else f"@{self.alias}" if self.alias else "")
