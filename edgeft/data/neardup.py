"""Near-duplicate examples in linear time and bounded memory, also on templated data.

Two examples are near-duplicates when their prompts *and* their answers are each at least
`threshold` similar: the Jaccard similarity of their character 5-gram sets, after case and
whitespace are folded. Comparing every pair is quadratic (20,000 rows took minutes), so:

1. **MinHash signatures** (64 values per text, for prompts and answers) are computed for all rows
   at once in numpy: every 5-gram's code points hashed by a rolling polynomial and a 64-bit
   mixer, then per value `min((a_k * h + b_k) mod 2^64)` over a row's grams, of which the low
   16 bits are kept (two different minima agree by chance once in 65,536: b-bit MinHash).
2. **LSH bands** over the answer signature (16 bands of 4 values) propose candidates: rows that
   agree on a whole band. A pair at similarity 0.9 agrees on some band with probability
   1 - (1 - 0.9^4)^16 > 0.9999. Each band is sorted once; a row is paired with at most `cap`
   earlier rows of its bucket (the most recent). A bucket larger than that is where quadratic
   work hides (templated rows one number apart all land together): the rows beyond the cap are
   counted and `edgeft data check` says so. The cap is `PAIR_BUDGET / rows` (at least `MIN_CAP`),
   so a small dataset is compared in full and a large one in bounded time.
3. The signatures **estimate** both similarities of each candidate pair (the share of equal
   values); pairs below `threshold - margin(threshold)` are dropped, and of the rest at most
   `CONFIRM_BUDGET / rows` per row (at least `MIN_CONFIRM`), the most similar first, are
   confirmed with exact Jaccard similarities.

Rows with the same content (exact duplicates, reported as such by the data check) are never
each other's near-duplicate.

datasketch, used before, hashes each 5-gram in Python (sha1) and returns whole LSH buckets
without a cap: both are what made the check quadratic and slow.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import numpy as np

NUM_PERM = 64
BAND_ROWS = 4  # values per LSH band: NUM_PERM / BAND_ROWS = 16 bands
# Candidate pairs per band (numpy work), and exact similarities in all (Python work), that a
# dataset of any size may cost: the per-row caps are these divided by the rows, within bounds.
PAIR_BUDGET = 1_000_000
CONFIRM_BUDGET = 200_000
MIN_CAP, MAX_CAP = 16, 4096  # earlier rows of one LSH bucket each row is compared with
MIN_CONFIRM = 4
SORT_KEYS = 16  # band keys a bucket's rows are sorted by (its own first)
# Below `threshold - margin(threshold)` estimated similarity a pair is not confirmed: 64 values
# estimate a similarity J with a standard deviation of sqrt(J (1 - J) / 64) (0.0375 at 0.9), and
# on templated data (every pair shares the same 64 hash functions) errors of 4 of them were seen:
# 4.5 deviations and 0.03 more drop a true pair far less than once in 10^4.
MARGIN_SD, MARGIN_SLACK = 4.5, 0.03
GRAM = 5
_CHUNK_ROWS = 20_000  # rows hashed at once (temporary arrays of a few tens of MB)
_CHUNK_PAIRS = 500_000  # candidate pairs compared at once

_rng = np.random.default_rng(20261206)
_A = _rng.integers(1, 2**63, size=NUM_PERM, dtype=np.uint64) * np.uint64(2) + np.uint64(1)  # odd multipliers
_B = _rng.integers(0, 2**63, size=NUM_PERM, dtype=np.uint64)
_BASE = np.uint64(0x100000001B3)
_PAD = "\x01"  # pads a text shorter than one gram to one gram (the whole text is then its only gram)


def normalise(text: str) -> str:
    return " ".join(text.lower().split())


def shingles(text: str, n: int = GRAM) -> set[str]:
    """The character n-grams of `text`, case and whitespace folded (the whole text if shorter)."""
    t = normalise(text)
    return {t[i : i + n] for i in range(max(1, len(t) - n + 1))}


def jaccard(a: set[str], b: set[str]) -> float:
    return len(a & b) / max(len(a | b), 1)


def similarity(a: tuple[str, str], b: tuple[str, str]) -> float:
    """The lower of the prompts' and the answers' exact similarities."""
    return min(jaccard(shingles(a[0]), shingles(b[0])), jaccard(shingles(a[1]), shingles(b[1])))


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: every input bit moves every output bit."""
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _signatures_chunk(texts: Sequence[str]) -> np.ndarray:
    padded = [t if len(t) >= GRAM else t + _PAD * (GRAM - len(t)) for t in map(normalise, texts)]
    lengths = np.fromiter(map(len, padded), dtype=np.int64, count=len(padded))
    points = np.frombuffer("".join(padded).encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)
    # The polynomial hash of the gram starting at every position (grams across rows are never used).
    h = np.zeros(len(points) - GRAM + 1, dtype=np.uint64)
    for k in range(GRAM):
        h = h * _BASE + points[k : len(points) - GRAM + 1 + k]
    counts = lengths - GRAM + 1
    row_start = np.concatenate(([0], np.cumsum(lengths)[:-1]))
    first = np.concatenate(([0], np.cumsum(counts)[:-1]))
    positions = np.arange(counts.sum(), dtype=np.int64) - np.repeat(first - row_start, counts)
    grams = _mix(h[positions])
    out = np.empty((len(padded), NUM_PERM), dtype=np.uint16)
    value = np.empty_like(grams)  # written in place: allocating it per value costs three times the time
    for k in range(NUM_PERM):
        np.multiply(grams, _A[k], out=value)
        np.add(value, _B[k], out=value)
        out[:, k] = np.minimum.reduceat(value, first).astype(np.uint16)
    return out


def signatures(texts: Sequence[str]) -> np.ndarray:
    """(len(texts), NUM_PERM) uint16 MinHash signatures (see the module docstring)."""
    out = np.empty((len(texts), NUM_PERM), dtype=np.uint16)
    with np.errstate(over="ignore"):
        for i in range(0, len(texts), _CHUNK_ROWS):
            out[i : i + _CHUNK_ROWS] = _signatures_chunk(texts[i : i + _CHUNK_ROWS])
    return out


@dataclass
class Parts:
    """Prompts and answers of a list of rows, their signatures, and a content id per row."""

    texts: list[tuple[str, str]]
    prompt: np.ndarray
    answer: np.ndarray
    content: np.ndarray  # rows with the same content (an exact duplicate) share an id

    @property
    def bands(self) -> np.ndarray:
        """(rows, bands) LSH keys of the answers: each band's 4 values of 16 bits read as one uint64."""
        return self.answer.view(np.uint64)

    @classmethod
    def of(cls, texts: list[tuple[str, str]], content: np.ndarray) -> Parts:
        return cls(texts, signatures([p for p, _ in texts]), signatures([a for _, a in texts]), content)


def _content_ids(keys: Sequence[Hashable]) -> np.ndarray:
    """One id per distinct key, in order of first appearance."""
    ids: dict[Hashable, int] = {}
    return np.fromiter((ids.setdefault(k, len(ids)) for k in keys), dtype=np.int64, count=len(keys))


def _estimated(q: Parts, r: Parts, qi: np.ndarray, rj: np.ndarray, floor: float) -> np.ndarray:
    """The pairs whose estimated similarity is at least `floor`, as `_Best` codes."""
    least = int(np.ceil(floor * NUM_PERM - 1e-9))
    out = []
    for s in range(0, len(qi), _CHUNK_PAIRS):
        a, b = qi[s : s + _CHUNK_PAIRS], rj[s : s + _CHUNK_PAIRS]
        same = np.count_nonzero(q.answer[a] == r.answer[b], axis=1)
        a, b, same = (
            a[same >= least],
            b[same >= least],
            same[same >= least],
        )  # answers first: the cheaper half
        same = np.minimum(same, np.count_nonzero(q.prompt[a] == r.prompt[b], axis=1))
        keep = same >= least
        out.append(_Best.code(a[keep], b[keep], same[keep], len(r.texts)))
    return np.concatenate(out) if out else np.empty(0, dtype=np.int64)


def margin(threshold: float) -> float:
    return MARGIN_SD * (threshold * (1 - threshold) / NUM_PERM) ** 0.5 + MARGIN_SLACK


def limits(rows: int) -> tuple[int, int]:
    """(bucket cap, exact similarities per row) for a dataset of `rows` rows."""
    return (
        min(MAX_CAP, max(MIN_CAP, PAIR_BUDGET // max(rows, 1))),
        max(MIN_CONFIRM, CONFIRM_BUDGET // max(rows, 1)),
    )


class _Best:
    """The `confirm` best-estimated candidates per query row, kept bounded band after band;
    `capped` marks the rows that had more (or met a full LSH bucket).

    A candidate is one int64, `(row * (NUM_PERM + 1) + NUM_PERM - equal values) * refs + partner`:
    sorted, the codes run by row, then most similar first, then earliest partner; a pair found in
    several bands has one code."""

    def __init__(self, rows: int, refs: int, confirm: int) -> None:
        self.confirm, self.refs = confirm, refs
        self.capped = np.zeros(rows, dtype=bool)
        self.codes = np.empty(0, dtype=np.int64)

    @staticmethod
    def code(qi: np.ndarray, rj: np.ndarray, same: np.ndarray, refs: int) -> np.ndarray:
        return (qi * (NUM_PERM + 1) + (NUM_PERM - same)) * refs + rj

    def add(self, codes: np.ndarray) -> None:
        codes = np.sort(np.concatenate((self.codes, codes)))  # (np.unique hashes: ten times slower here)
        codes = codes[np.r_[True, codes[1:] != codes[:-1]][: len(codes)]]
        qi = self.rows(codes)
        starts = np.flatnonzero(np.r_[True, qi[1:] != qi[:-1]][: len(qi)])
        rank = np.arange(len(qi)) - np.repeat(starts, np.diff(np.r_[starts, len(qi)]))
        keep = rank < self.confirm
        self.capped[qi[~keep]] = True
        self.codes = codes[keep]

    def rows(self, codes: np.ndarray) -> np.ndarray:
        return codes // self.refs // (NUM_PERM + 1)

    def partners(self, codes: np.ndarray) -> np.ndarray:
        return codes % self.refs

    def pairs(self) -> tuple[list[int], list[int]]:
        return self.rows(self.codes).tolist(), self.partners(self.codes).tolist()


def _neighbours(bands: np.ndarray, band: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows sorted by their key in `band`, then (sorted neighbourhood) by their keys in the
    following bands, so that within a bucket too large to compare in full the rows sharing the
    most values sit next to each other: (order, each sorted row's key). SORT_KEYS bounds the sort."""
    count = bands.shape[1]
    following = [bands[:, (band + k) % count] for k in range(min(SORT_KEYS, count) - 1, 0, -1)]
    order = np.lexsort((*following, bands[:, band]))  # the last key sorts first; stable
    return order, bands[order, band]


def _pairs_within(bands: np.ndarray, band: int, cap: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(later row, earlier row) for each row and the rows at most `cap` places before it in its
    bucket's sorted order (`_neighbours`), and the rows of buckets larger than cap + 1."""
    order, ordered = _neighbours(bands, band)
    later, earlier = [], []
    for d in range(1, cap + 1):
        same = ordered[d:] == ordered[:-d]
        if not same.any():
            break
        a, b = order[d:][same], order[:-d][same]
        later.append(np.maximum(a, b))
        earlier.append(np.minimum(a, b))
    if len(ordered) > cap + 1:
        full = ordered[cap + 1 :] == ordered[: -cap - 1]
        capped = np.union1d(order[cap + 1 :][full], order[: -cap - 1][full])
    else:
        capped = order[:0]
    empty = np.empty(0, dtype=np.int64)
    return (np.concatenate(later) if later else empty, np.concatenate(earlier) if earlier else empty, capped)


def _pairs_across(
    queries: np.ndarray, refs: np.ndarray, cap: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(query row, reference row) for each query and at most `cap` references of its bucket, and
    the queries whose bucket held more."""
    order = np.argsort(refs, kind="stable")
    ordered = refs[order]
    lo, hi = np.searchsorted(ordered, queries, "left"), np.searchsorted(ordered, queries, "right")
    qs, rs = [], []
    for d in range(min(cap, int((hi - lo).max(initial=0)))):
        has = lo + d < hi
        qs.append(np.flatnonzero(has))
        rs.append(order[(lo + d)[has]])
    empty = np.empty(0, dtype=np.int64)
    return (
        np.concatenate(qs) if qs else empty,
        np.concatenate(rs) if rs else empty,
        np.flatnonzero(hi - lo > cap),
    )


def _candidates(q: Parts, r: Parts | None, threshold: float) -> tuple[_Best, int]:
    """The best-estimated candidate partners of each row of `q` among the earlier rows of `q`
    (`r` None) or among `r`; and how many rows had more candidates than were kept."""
    other = r if r is not None else q
    cap, confirm = limits(len(q.texts) + (len(r.texts) if r is not None else 0))
    best = _Best(len(q.texts), len(other.texts), confirm)
    for band in range(NUM_PERM // BAND_ROWS):
        if r is None:
            qi, rj, over = _pairs_within(q.bands, band, cap)
        else:
            qi, rj, over = _pairs_across(
                np.ascontiguousarray(q.bands[:, band]), np.ascontiguousarray(r.bands[:, band]), cap
            )
        keep = q.content[qi] != other.content[rj]
        codes = _estimated(q, other, qi[keep], rj[keep], threshold - margin(threshold))
        # A bucket is full of rows that share common text ("the", a template) as often as of look-alikes;
        # a row is counted as not fully compared only when its window held a plausible look-alike.
        plausible = np.zeros(len(q.texts), dtype=bool)
        plausible[best.rows(codes)] = True
        if r is None:
            plausible[best.partners(codes)] = True
        best.capped[over[plausible[over]]] = True
        best.add(codes)
    return best, int(best.capped.sum())


def _confirmed(q: Parts, r: Parts, best: _Best, threshold: float) -> dict[int, tuple[float, int]]:
    """row → (similarity, partner) for rows with a candidate at or above `threshold`, exactly; the
    most similar partner, the earlier one on a tie."""
    out: dict[int, tuple[float, int]] = {}
    grams: dict[
        tuple[int, int], tuple[set[str], set[str]]
    ] = {}  # a row's partners come together: a small cache

    def sets(p: Parts, row: int, tag: int) -> tuple[set[str], set[str]]:
        if (tag, row) not in grams:
            if len(grams) > 4096:
                grams.clear()
            grams[(tag, row)] = (shingles(p.texts[row][0]), shingles(p.texts[row][1]))
        return grams[(tag, row)]

    for i, j in zip(*best.pairs(), strict=True):
        a, b = sets(q, i, 0), sets(r, j, 1 if r is not q else 0)
        sim = min(jaccard(a[0], b[0]), jaccard(a[1], b[1]))
        if sim >= threshold and (i not in out or sim > out[i][0] or (sim == out[i][0] and j < out[i][1])):
            out[i] = (sim, j)
    return out


def within(
    texts: list[tuple[str, str]], keys: Sequence[Hashable], threshold: float
) -> tuple[dict[int, tuple[float, int]], int]:
    """Near-duplicates among rows given as (prompt, answer), each row with its most similar
    earlier row: {row: (similarity, earlier row)}; and how many rows had more candidates than
    were compared (a full LSH bucket, or more than `limits`' exact comparisons)."""
    if not texts:
        return {}, 0
    parts = Parts.of(texts, _content_ids(keys))
    best, capped = _candidates(parts, None, threshold)
    return _confirmed(parts, parts, best, threshold), capped


def across(
    queries: list[tuple[str, str]],
    query_keys: Sequence[Hashable],
    refs: list[tuple[str, str]],
    ref_keys: Sequence[Hashable],
    threshold: float,
) -> dict[int, tuple[float, int]]:
    """Query rows that are near-duplicates of a reference row: {query row: (similarity, reference row)}.
    Rows with a reference's exact content are not listed (an exact match is a check of its own)."""
    if not queries or not refs:
        return {}
    content = _content_ids([*ref_keys, *query_keys])
    q, r = Parts.of(queries, content[len(refs) :]), Parts.of(refs, content[: len(refs)])
    best, _ = _candidates(q, r, threshold)
    return _confirmed(q, r, best, threshold)
