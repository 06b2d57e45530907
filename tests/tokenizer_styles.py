"""Tokenizers in the styles of the models researchers use, trained offline with the ``tokenizers`` library
on a small corpus of the builtin tasks' words (no downloads).

| style | built like | a year | " she" |
|---|---|---|---|
| ``gpt2`` | GPT-2's own tokenizer (shipped with circuitkit) | " 17" + "32" | "Ġshe" |
| ``llama2`` | transformers' ``LlamaTokenizer`` (SentencePiece "▁", prepended to the first word only) | "▁" + one token per digit | "▁she" |
| ``llama2-legacy`` | the older SentencePiece layout: a normalizer prepends "▁" and turns spaces into "▁" | one token per digit | "▁" + "▁she" |
| ``gemma`` | SentencePiece "▁" without a dummy prefix, digits split | one token per digit | "▁she" |
| ``llama3`` | byte-level BPE, digits in groups of up to three from the left | " " + "173" + "2" | "Ġshe" |
| ``qwen2`` | byte-level BPE, one token per digit, no BOS token | " " + one token per digit | "Ġshe" |
| ``word`` | one token per whitespace-separated word, ``[UNK]`` for the rest, no other special token | "1732" | "she" |
| ``char`` | one token per character | one token per character | " " + "s" + "h" + "e" |
"""

from __future__ import annotations

import functools
from typing import Any

STYLES = ["gpt2", "llama2", "llama2-legacy", "gemma", "llama3", "qwen2", "word", "char"]

# The pre-tokenizer regex of byte-level BPE tokenizers (GPT-4/Llama-3 style): digits in groups of up to three.
BYTE_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
SP_SPECIALS = ["<unk>", "<s>", "</s>"] + [f"<0x{i:02X}>" for i in range(256)]


@functools.cache
def corpus(without: frozenset[str] = frozenset()) -> tuple[str, ...]:
    """Sentences of the builtin tasks and their word lists (and the years 1100-1999), minus ``without``."""
    from circuitkit_plugins.tasks import country_capital, gender_pronoun, greater_than, hypernymy, ioi, sva

    lines = [t.format(A="Mary", B="John", S="John", place="store", object="drink") for t in ioi.TEMPLATES]
    lines += [" ".join(ioi.NAMES), " ".join(ioi.PLACES), " ".join(ioi.OBJECTS)]
    for female, male in gender_pronoun.SUBJECTS.values():
        lines += [" ".join(female), " ".join(male)]
    lines += [t.format(subj="the nurse") + " she he" for t in gender_pronoun.TEMPLATES]
    lines += [t.format(subj="key", attr="cabinet") + " is are was were has have" for t in sva.TEMPLATES]
    lines += [" ".join(a + " " + b for a, b in sva.SUBJECTS + sva.ATTRACTORS)]
    lines += [" ".join(answers) + " " + " ".join(hyponyms) for answers, hyponyms in hypernymy.CATEGORIES.values()]
    lines += [t.format("rubies", "pearls", "opals") for t in hypernymy.TEMPLATES]
    lines += [" ".join(f"{a} {b}" for a, b in country_capital.CAPITALS)]
    lines += [t.format(capital="Paris") for t in country_capital.TEMPLATES]
    lines += [t.format(noun=n, start="1732", century="1745") for t in greater_than.TEMPLATES for n in greater_than.NOUNS]
    lines += [" ".join(str(y) for y in range(1100, 2000))]
    if without:
        lines = [" ".join(w for w in line.split(" ") if w.strip(",.") not in without) for line in lines]
    return tuple(lines * 3)


def _fast(tok: Any, **special: str) -> Any:
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=tok, **special)


def _byte_level(digits: str, specials: list[str], vocab_size: int) -> Any:
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(BYTE_SPLIT.replace(r"\p{N}{1,3}", digits)), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus(), trainer)
    return tok


def _sentencepiece(prepend: bool, vocab_size: int) -> Any:
    """A SentencePiece-style BPE (words start with "▁", digits one per token, byte fallback)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.normalizer = normalizers.Sequence(([normalizers.Prepend("▁")] if prepend else []) + [normalizers.Replace(" ", "▁")])
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split("▁", behavior="merged_with_next"),
            pre_tokenizers.Digits(individual_digits=True),
        ]
    )
    tok.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()] + ([decoders.Strip(" ", 1, 0)] if prepend else [])
    )
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SP_SPECIALS, show_progress=False)
    tok.train_from_iterator(corpus(), trainer)
    return tok


@functools.cache
def build(style: str) -> Any:
    """A tokenizer of ``style`` (see the module docstring); the same object for the same style."""
    from tokenizers import decoders, pre_tokenizers

    if style == "gpt2":
        from circuitkit.testing_models import gpt2_tokenizer

        return gpt2_tokenizer()
    if style == "llama2":
        import json

        from transformers import LlamaTokenizer

        model = json.loads(_sentencepiece(True, 3000).to_str())["model"]
        return LlamaTokenizer(vocab=model["vocab"], merges=[tuple(m) for m in model["merges"]])
    if style == "llama2-legacy":
        tok = _sentencepiece(True, 3000)
        tok.pre_tokenizer = pre_tokenizers.Digits(individual_digits=True)  # and the normalizer does the rest
        return _fast(tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    if style == "gemma":
        return _fast(_sentencepiece(False, 3000), bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    if style == "llama3":
        tok = _byte_level(r"\p{N}{1,3}", ["<|begin_of_text|>", "<|end_of_text|>"], 3000)
        return _fast(tok, bos_token="<|begin_of_text|>", eos_token="<|end_of_text|>")
    if style == "qwen2":
        tok = _byte_level(r"\p{N}", ["<|endoftext|>"], 3000)
        return _fast(tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    if style in ("word", "word-partial"):
        return word_level(frozenset() if style == "word" else PARTIAL)
    if style == "char":
        from tokenizers import Tokenizer, models, trainers

        tok = Tokenizer(models.BPE(unk_token="[UNK]"))
        tok.decoder = decoders.Fuse()
        tok.train_from_iterator(corpus(), trainers.BpeTrainer(vocab_size=10, special_tokens=["[UNK]"], show_progress=False))
        return _fast(tok, unk_token="[UNK]")
    raise ValueError(style)


#: Words a partial word-level vocabulary lacks: half the female names, some professions, capitals, hyponyms.
PARTIAL = frozenset(
    [
        "Mary",
        "Anna",
        "Lisa",
        "Sarah",
        "Laura",
        "Emma",
        "Alice",
        "Kate",
        "Jane",
        "Rachel",
        "Emily",
        "Jessica",
        "Julia",
        "Grace",
        "Helen",
        "Susan",
        "Karen",
        "Linda",
        "Nancy",
        "Lucy",
        "nurse",
        "secretary",
        "plumber",
        "Kabul",
        "Paris",
        "Berlin",
        "Tokyo",
        "rubies",
        "emeralds",
        "apples",
        "dogs",
        "guitars",
    ]
)


def word_level(without: frozenset[str] = frozenset()) -> Any:
    """A word-level tokenizer (``[UNK]`` only) over the corpus minus ``without``."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(corpus(without), trainers.WordLevelTrainer(special_tokens=["[UNK]"], show_progress=False))
    return _fast(tok, unk_token="[UNK]")
