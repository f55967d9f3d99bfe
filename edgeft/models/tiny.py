"""The tiny-model kit: seeded, self-made Llama models for tests, examples and benchmarks.

No model hub is reachable where edgeft is developed and tested, so the project makes its own
base models. Each is a real HF model directory (config, safetensors, SentencePiece tokenizer,
chat template, generation config) whose tokenizer and template are built so that HF, llama.cpp
and ONNX Runtime tokenise it identically, and which is briefly pre-trained so its next-token
distributions are peaked (on random weights, quantized top-1 agreement would mean nothing).

    edgeft tiny-model models/tiny-small --size small --seed 0

The same size, seed and kit version give byte-identical files.
"""

from __future__ import annotations

import json
import logging
import random
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from edgeft.core.errors import InputError

log = logging.getLogger(__name__)

# Bump when the corpus, tokenizer or training recipe changes: it is part of the cache key.
KIT_VERSION = 2

IM_START, IM_END = "<|im_start|>", "<|im_end|>"

# ChatML with a leading BOS. The `generation` block marks what the assistant says so trl can
# compute the loss on assistant tokens only; it renders to nothing and changes no output.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}"
    "{{ '<|im_start|>assistant\\n' }}"
    "{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}"
    "{{ '\\n' }}"
    "{% else %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


@dataclass(frozen=True)
class Size:
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    vocab: int
    steps: int  # pre-training steps
    seq_len: int
    batch: int
    lr: float
    copy_tasks: bool = (
        False  # pre-train on in-context copying too (questions whose values the answer repeats)
    )


# "small" has hidden and intermediate sizes that are multiples of 256, the K-quant block size:
# with smaller dimensions llama.cpp silently falls back to q5_0/f16 for those tensors. It is
# the example's base, so it is also pre-trained to copy values from a question into its answer
# (what every real base model can do): with 300 steps and no copy tasks the fine-tuned model
# learned the SQL form but never the right names (exact match 0/40); with them, 9/40.
SIZES = {
    "micro": Size(64, 128, 2, 4, 2, 512, 200, 64, 16, 3e-3),
    "small": Size(256, 512, 2, 4, 2, 1024, 1200, 96, 16, 2e-3, copy_tasks=True),
}

_SUBJECTS = [
    "the cat",
    "a farmer",
    "the old ship",
    "my neighbour",
    "the river",
    "a student",
    "the engine",
    "our team",
    "the library",
    "a small bird",
    "the city",
    "the teacher",
]
_VERBS = [
    "sees",
    "builds",
    "carries",
    "finds",
    "paints",
    "follows",
    "opens",
    "reads",
    "counts",
    "cleans",
    "moves",
    "watches",
]
_OBJECTS = [
    "a red box",
    "the bridge",
    "seven apples",
    "the long road",
    "a quiet room",
    "the letters",
    "an open window",
    "the garden",
    "three stones",
    "the blue door",
]
_PLACES = [
    "in the morning",
    "near the station",
    "after lunch",
    "under the tree",
    "before winter",
    "at the market",
    "on Monday",
    "in the north",
]
_TABLES = {
    "books": ["id", "title", "author", "year", "pages"],
    "cities": ["id", "name", "country", "population"],
    "flights": ["id", "origin", "destination", "price", "duration"],
}
_WORDS = [
    "apple",
    "river",
    "stone",
    "cloud",
    "engine",
    "paper",
    "garden",
    "window",
    "silver",
    "orange",
    "winter",
    "signal",
]


def _sentence(rng: random.Random) -> str:
    s = f"{rng.choice(_SUBJECTS)} {rng.choice(_VERBS)} {rng.choice(_OBJECTS)}"
    if rng.random() < 0.5:
        s += " " + rng.choice(_PLACES)
    return s[0].upper() + s[1:] + rng.choice([".", ".", "!", "?"])


def _sql(rng: random.Random) -> str:
    table = rng.choice(list(_TABLES))
    cols = _TABLES[table]
    picked = ", ".join(rng.sample(cols, rng.randint(1, 3))) if rng.random() < 0.7 else "*"
    q = f"SELECT {picked} FROM {table}"
    if rng.random() < 0.6:
        q += f" WHERE {rng.choice(cols)} {rng.choice(['=', '>', '<', '>='])} {rng.randint(1, 999)}"
    if rng.random() < 0.3:
        q += f" ORDER BY {rng.choice(cols)} {rng.choice(['ASC', 'DESC'])}"
    return q + ";"


_SYLLABLES = ["ka", "lo", "mi", "ra", "te", "su", "no", "vi", "da", "be", "or", "an", "el", "us", "pa", "ri"]


def _value(rng: random.Random) -> str:
    """A value to copy: a made-up name or a number (never one of the example's own values)."""
    if rng.random() < 0.5:
        return "".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(2, 3))).capitalize()
    return str(rng.randint(1, 99999))


def _question_sql(rng: random.Random) -> str:
    """A question and its SQL over the corpus' own schema, the value copied from one to the other."""
    table = rng.choice(list(_TABLES))
    col = rng.choice(_TABLES[table][1:])
    v = _value(rng)
    quoted = v if v.isdigit() else f"'{v}'"
    ask = rng.choice(
        [
            f"Find the {table} whose {col} is {v}.",
            f"Which {table} have {col} {v}?",
            f"Show {table} with {col} equal to {v}.",
        ]
    )
    return f"{ask} SELECT * FROM {table} WHERE {col} = {quoted};"


def _chat(rng: random.Random, copy_tasks: bool = False) -> str:
    """A short ChatML conversation on a generic task, so the base model knows the format."""
    kind = rng.randrange(5 if copy_tasks else 4)
    if kind == 4:
        v = _value(rng)
        q, ans = f"Repeat: {v}", v
    elif kind == 0:
        a, b = rng.randint(0, 50), rng.randint(0, 50)
        q, ans = f"What is {a} plus {b}?", str(a + b)
    elif kind == 1:
        w = rng.choice(_WORDS)
        q, ans = f"Write the word {w} in capital letters.", w.upper()
    elif kind == 2:
        words = rng.sample(_WORDS, 3)
        q, ans = f"Repeat: {' '.join(words)}", " ".join(words)
    else:
        q, ans = f"Finish the sentence: {rng.choice(_SUBJECTS)}", _sentence(rng)
    system = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n" if rng.random() < 0.3 else ""
    return f"{system}{IM_START}user\n{q}{IM_END}\n{IM_START}assistant\n{ans}{IM_END}\n"


def corpus(seed: int, lines: int = 6000, copy_tasks: bool = False) -> list[str]:
    """Generated pre-training text: prose, SQL over a schema unlike the examples', and chats;
    with `copy_tasks`, also questions followed by their SQL and "Repeat:" chats (in-context copying)."""
    rng = random.Random(seed)
    out = []
    for _ in range(lines):
        r = rng.random()
        if r < (0.35 if copy_tasks else 0.45):
            out.append(" ".join(_sentence(rng) for _ in range(rng.randint(1, 3))))
        elif r < (0.5 if copy_tasks else 0.7):
            out.append(_sql(rng))
        elif copy_tasks and r < 0.7:
            out.append(_question_sql(rng))
        else:
            out.append(_chat(rng, copy_tasks))
    return out


def _train_tokenizer(text_lines: list[str], vocab: int, workdir: Path) -> Path:
    import sentencepiece as spm

    corpus_file = workdir / "corpus.txt"
    # SentencePiece reads one sentence per line; chats have inner newlines, so flatten them
    # for tokenizer training only (the model still sees the real newlines).
    corpus_file.write_text("\n".join(t.replace("\n", " ") for t in text_lines) + "\n")
    prefix = workdir / "tokenizer"
    spm.SentencePieceTrainer.train(
        input=str(corpus_file),
        model_prefix=str(prefix),
        model_type="bpe",
        vocab_size=vocab,
        character_coverage=1.0,
        byte_fallback=True,  # any unicode input maps to byte tokens instead of <unk>
        # No dummy prefix and no whitespace folding: llama.cpp applies neither, so with these
        # settings all three runtimes see exactly the same pieces.
        add_dummy_prefix=False,
        remove_extra_whitespaces=False,
        normalization_rule_name="identity",
        split_digits=True,
        allow_whitespace_only_pieces=True,
        user_defined_symbols=[IM_START, IM_END],
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        num_threads=1,  # multi-threaded training is not reproducible
        minloglevel=2,
    )
    # The trainer records its input and output paths (a temporary directory) in the model;
    # blank them so the same seed gives byte-identical files.
    from sentencepiece import sentencepiece_model_pb2

    model_file = prefix.with_suffix(".model")
    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(model_file.read_bytes())
    del proto.trainer_spec.input[:]
    proto.trainer_spec.model_prefix = ""
    model_file.write_bytes(proto.SerializeToString())
    return model_file


def _write_tokenizer(sp_model: Path, out: Path) -> None:
    from tokenizers import AddedToken
    from transformers import LlamaTokenizerFast

    # Converted from the SentencePiece model with add_prefix_space=False given explicitly:
    # otherwise the conversion assumes a dummy prefix that the model does not have.
    fast = LlamaTokenizerFast(
        vocab_file=str(sp_model),
        legacy=True,
        add_prefix_space=False,
        from_slow=True,
        add_bos_token=True,
        add_eos_token=False,
    )
    # Special, so they are never split, are skipped when decoding with skip_special_tokens,
    # and become control tokens in GGUF.
    fast.add_special_tokens(
        {
            "additional_special_tokens": [
                AddedToken(t, special=True, normalized=False) for t in (IM_START, IM_END)
            ]
        }
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.pad_token = fast.unk_token
    fast.save_pretrained(out)
    shutil.copy(sp_model, out / "tokenizer.model")


def _write_bpe_tokenizer(texts: list[str], vocab: int, out: Path, pre_tokenizer=None) -> None:
    """A byte-level BPE tokenizer (GPT-2 style): the kind llama.cpp identifies by hash, not by config.

    `pre_tokenizer` replaces GPT-2's (ByteLevel with its regex) to make a variant llama.cpp
    cannot know, for the tests of that failure.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<unk>", "<s>", "</s>", IM_START, IM_END]
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizer or pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab,
        special_tokens=specials,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(texts, trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", tok.token_to_id("<s>"))]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<unk>",
        additional_special_tokens=[IM_START, IM_END],
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(out)


# Qwen2's pre-tokenizer regex (digits one at a time), as its tokenizer.json writes it.
QWEN2_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
    r"\s*[\r\n]+|\s+(?!\S)|\s+"
)
ENDOFTEXT = "<|endoftext|>"


def _write_qwen2_tokenizer(texts: list[str], vocab: int, out: Path) -> None:
    """Qwen2's layout: byte-level BPE behind its regex, `<|endoftext|>` `<|im_start|>` `<|im_end|>`
    as the only special tokens, no BOS added, `<|im_end|>` the EOS (an instruct model's), and
    `<|endoftext|>` the pad and the BOS its config.json names (what its GGUF then carries)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))  # Qwen's NFC normalizer left out: llama.cpp applies none
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab,
        special_tokens=[ENDOFTEXT, IM_START, IM_END],
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=IM_END,
        pad_token=ENDOFTEXT,
        additional_special_tokens=[IM_START, IM_END],
    )
    fast.chat_template = CHAT_TEMPLATE.replace("{{ bos_token }}", "")
    fast.save_pretrained(out)


def _pretrain(
    model,
    tokenizer,
    texts: list[str],
    size: Size,
    seed: int,
    progress: Callable[[int, int, float], None] | None,
) -> float:
    import torch

    ids: list[int] = []
    for t in texts:
        ids.extend(tokenizer(t, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id])
    data = torch.tensor(ids)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=size.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=size.lr, total_steps=size.steps, pct_start=0.1)
    model.train()
    loss_value = float("nan")
    for step in range(size.steps):
        starts = torch.randint(0, len(data) - size.seq_len - 1, (size.batch,), generator=gen)
        batch = torch.stack([data[s : s + size.seq_len] for s in starts.tolist()])
        # Every window starts with BOS, as every real input does (where the model has one).
        if tokenizer.bos_token_id is not None:
            batch[:, 0] = tokenizer.bos_token_id
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        loss_value = loss.item()
        if progress:
            progress(step + 1, size.steps, loss_value)
    model.eval()
    return loss_value


def build_tiny_model(
    out_dir: Path,
    size: str = "micro",
    seed: int = 0,
    *,
    force: bool = False,
    progress: Callable[[int, int, float], None] | None = None,
    tokenizer: str = "spm",
    pre_tokenizer=None,
) -> Path:
    """Write a pre-trained tiny Llama model directory to `out_dir`; return its path.

    `tokenizer` is "spm" (SentencePiece, the default), "bpe" (byte-level BPE, GPT-2 style) or
    "qwen2" (a Qwen2 model: Qwen's regex, special tokens and no BOS).
    """
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    if size not in SIZES:
        raise InputError(f"unknown tiny-model size {size!r}: choose one of {', '.join(SIZES)}")
    out_dir = Path(out_dir)
    if out_dir.exists() and not force:
        raise InputError(f"{out_dir} already exists: choose another path or pass --force")
    spec = SIZES[size]
    from edgeft.core.workdir import cache_entry

    with cache_entry(out_dir, replace=force) as tmp:
        texts = corpus(seed, copy_tasks=spec.copy_tasks)
        if tokenizer == "bpe":
            _write_bpe_tokenizer(texts, spec.vocab, tmp, pre_tokenizer)
        elif tokenizer == "qwen2":
            _write_qwen2_tokenizer(texts, spec.vocab, tmp)
        else:
            with tempfile.TemporaryDirectory() as work:
                sp_model = _train_tokenizer(texts, spec.vocab, Path(work))
                _write_tokenizer(sp_model, tmp)
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(tmp)
        torch.manual_seed(seed)
        shape = dict(
            vocab_size=len(tok),
            hidden_size=spec.hidden,
            intermediate_size=spec.intermediate,
            num_hidden_layers=spec.layers,
            num_attention_heads=spec.heads,
            num_key_value_heads=spec.kv_heads,
            max_position_embeddings=1024,
            rms_norm_eps=1e-5,
            rope_theta=10000.0,
            torch_dtype="float32",
        )
        im_end = tok.convert_tokens_to_ids(IM_END)
        if tokenizer == "qwen2":
            from transformers import Qwen2Config, Qwen2ForCausalLM

            # Qwen2.5-0.5B-Instruct's layout: tied embeddings, q/k/v biases, config.json's BOS the
            # <|endoftext|> no tokenizer adds, and generate stopping on both turn and text ends.
            endoftext = tok.convert_tokens_to_ids(ENDOFTEXT)
            model = Qwen2ForCausalLM(
                Qwen2Config(**shape, tie_word_embeddings=True, bos_token_id=endoftext, eos_token_id=im_end)
            )
            stops, bos = [im_end, endoftext], endoftext
        else:
            model = LlamaForCausalLM(
                LlamaConfig(
                    **shape,
                    tie_word_embeddings=False,
                    bos_token_id=tok.bos_token_id,
                    eos_token_id=tok.eos_token_id,
                    pad_token_id=tok.pad_token_id,
                )
            )
            # End of turn as well as EOS: without it HF generate runs past the answer.
            stops, bos = [tok.eos_token_id, im_end], tok.bos_token_id
        loss = _pretrain(model, tok, texts, spec, seed, progress)
        model.generation_config = GenerationConfig(
            bos_token_id=bos, eos_token_id=stops, pad_token_id=tok.pad_token_id
        )
        model.save_pretrained(tmp, safe_serialization=True)
        (tmp / "edgeft_tiny.json").write_text(
            json.dumps(
                {
                    "kit_version": KIT_VERSION,
                    "size": size,
                    "seed": seed,
                    "tokenizer": tokenizer,
                    "final_pretrain_loss": round(loss, 4),
                },
                indent=2,
            )
            + "\n"
        )
    log.info("tiny model %s (seed %d) written to %s, final loss %.3f", size, seed, out_dir, loss)
    return out_dir


def cached_tiny_model(size: str, seed: int = 0, cache_dir: Path | None = None) -> Path:
    """The tiny model for (size, seed), built on first use under the edgeft cache.

    `size` may end in "-bpe" for the byte-level BPE tokenizer variant ("micro-bpe"), or in "-qwen2"
    for a Qwen2 model with Qwen's special-token layout ("micro-qwen2").
    """
    from edgeft.core.paths import cache_dir as default_cache

    base, _, variant = size.partition("-")
    root = Path(cache_dir) if cache_dir else default_cache() / "tiny"
    path = root / f"{size}-seed{seed}-kit{KIT_VERSION}"
    if not (path / "config.json").exists():
        if variant not in ("", "bpe", "qwen2"):
            raise InputError(
                f"unknown tiny-model variant {variant!r} in {size!r}: use {base}, {base}-bpe or {base}-qwen2"
            )
        build_tiny_model(path, base, seed, tokenizer=variant or "spm")
    return path
