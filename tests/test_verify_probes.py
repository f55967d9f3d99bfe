"""Verify's probes and token checks (pipeline/verify/probes.py, tokens.py): token-id diagnosis, common
prefixes, probes from validation rows and the edge-case probes."""

from __future__ import annotations

import pytest

from edgeft.pipeline.verify.probes import EDGE_CASES, Probe, common_prefix, edge_probes, probes_from
from edgeft.pipeline.verify.tokens import diagnose_ids

SPECIAL = {"bos": 1, "eos": 2, "added": {50: "<|im_end|>"}}


@pytest.mark.parametrize(
    ("got", "want", "cause"),
    [
        ([1, 1, 5, 6], [1, 5, 6], "BOS added twice"),
        ([5, 6], [1, 5, 6], "BOS missing"),
        ([1, 5, 6], [5, 6], "BOS added where the reference has none"),
        ([1, 5, 7, 8, 9], [1, 5, 50, 9], "the special token '<|im_end|>' (id 50) is split"),
        ([1, 5, 7], [1, 5, 6], ""),
        ([1, 5, 6], [1, 5, 6], ""),
    ],
)
def test_diagnose_ids_names_the_known_faults(got: list[int], want: list[int], cause: str) -> None:
    said = diagnose_ids(got, want, SPECIAL)
    assert said.startswith(cause) if cause else said == ""


def test_diagnose_ids_of_different_texts_only_judges_bos() -> None:
    # tokenizer=False: the ids come from different renderings, a split token says nothing.
    assert diagnose_ids([7, 5, 6], [1, 5, 50], SPECIAL, tokenizer=False) == "BOS missing"
    assert diagnose_ids([1, 5, 7, 8], [1, 5, 50], SPECIAL, tokenizer=False) == ""


def test_common_prefix() -> None:
    assert common_prefix([1, 2, 3], [1, 2, 4, 5]) == 2
    assert common_prefix("abc", "abc") == 3
    assert common_prefix([], [1]) == 0


ROWS = [
    {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": f"question {i}"},
            {"role": "assistant", "content": f"answer {i}"},
        ]
    }
    for i in range(5)
]


def _chars(messages: list[dict[str, str]]) -> int:  # a stand-in tokenizer: one token per character
    return sum(len(m["content"]) for m in messages)


def test_probes_from_validation_rows_split_prompt_and_answer() -> None:
    probes = probes_from(ROWS + [{"text": "plain text row"}], 10)
    assert [p.name for p in probes] == [f"validation[{i}]" for i in range(6)]
    assert probes[0].messages == ROWS[0]["messages"][:-1] and probes[0].answer == "answer 0"
    assert probes[0].plain_text == "question 0 answer 0"
    assert probes[5].messages is None and probes[5].plain_text == "plain text row"
    assert len(probes_from(ROWS, 2)) == 2


def test_edge_probes_keep_the_system_prompt_and_fill_the_budget() -> None:
    probes = edge_probes(probes_from(ROWS, 5), _chars, budget=200)
    names = [p.name for p in probes]
    assert names[: len(EDGE_CASES)] == list(EDGE_CASES)
    assert all(p.edge and p.answer is None and p.messages[0]["content"] == "Be brief." for p in probes)
    near = probes[-1]
    assert near.name.startswith("edge:near-context(")
    n = _chars(near.messages)
    assert near.name == f"edge:near-context({n} tokens)"
    # As long as fits, no more: one more line ("\nquestion k", 11 characters) would pass the budget.
    assert 200 - 11 < n <= 200


def test_edge_probes_need_a_conversation() -> None:
    assert edge_probes([Probe("validation[0]", None, "text")], _chars, 100) == []
