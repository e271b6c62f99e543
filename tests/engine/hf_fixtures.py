"""Tiny Hugging Face model folders built offline, for tests that need a transformers backbone.

Each folder holds config.json, random weights and (text) a tokenizer over a small fixed vocabulary or (vit) an
image processor, exactly what `build_backbone(ModelConfig(source="hf", name=str(folder)), ...)` reads. Fixed
vocabularies keep token ids identical in every process, which a tokenizer trained on the fly would not.
"""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

WORDS = [
    "the",
    "a",
    "an",
    "cat",
    "dog",
    "bird",
    "sat",
    "ran",
    "on",
    "under",
    "mat",
    "rug",
    "good",
    "bad",
    "great",
    "awful",
    "movie",
    "film",
    "plot",
    "actor",
    "love",
    "hate",
    "was",
    "is",
    "very",
    "not",
    "and",
    "but",
    "it",
    "this",
    "that",
]
BERT_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
ROBERTA_SPECIALS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
ARCHS = ("bert", "distilbert", "roberta", "vit", "llama")
CHAT_SPECIALS = ["<pad>", "<unk>", "<s>", "<|im_start|>", "<|im_end|>"]
CHAT_WORDS = ["user", "assistant", "system", "yes", "no", "?", ".", "is", "spam", "answer", "or"]
# ChatML, as SmolLM2 and Qwen write it: the assistant's turn ends with <|im_end|>, the end-of-sequence token
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def make_tiny_hf_dir(tmp_path: Path, arch: str) -> Path:
    """Write a tiny `arch` model folder under tmp_path and return it (builds in well under a second)."""
    import torch

    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; expected one of {ARCHS}")
    folder = Path(tmp_path) / f"tiny-{arch}"
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    model, tokenizer = _BUILDERS[arch](folder)
    from transformers.utils import logging as tf_logging

    tf_logging.disable_progress_bar()
    try:
        model.save_pretrained(folder)
    finally:
        tf_logging.enable_progress_bar()
    tokenizer.save_pretrained(folder)
    return folder


def _bert(folder: Path):
    from transformers import BertConfig, BertModel, BertTokenizer

    config = BertConfig(
        vocab_size=100,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=37,
        max_position_embeddings=64,
    )
    return BertModel(config), BertTokenizer(vocab=_wordpiece_vocab(folder))


def _distilbert(folder: Path):
    from transformers import DistilBertConfig, DistilBertModel, DistilBertTokenizer

    config = DistilBertConfig(vocab_size=100, dim=32, n_layers=2, n_heads=2, hidden_dim=37, max_position_embeddings=64)
    return DistilBertModel(config), DistilBertTokenizer(vocab=_wordpiece_vocab(folder))


def _roberta(folder: Path):
    from transformers import RobertaConfig, RobertaModel, RobertaTokenizer

    vocab = {tok: i for i, tok in enumerate([*ROBERTA_SPECIALS, "\u0120", *"abcdefghijklmnopqrstuvwxyz"])}
    merges: list[tuple[str, str]] = []
    # merges that build each whole word; the space-marked ones rank first so no plain merge splits them
    for tok in ["\u0120" + w for w in WORDS] + list(WORDS):
        for i in range(2, len(tok) + 1):
            if tok[:i] not in vocab:
                vocab[tok[:i]] = len(vocab)
                merges.append((tok[: i - 1], tok[i - 1]))
    config = RobertaConfig(
        vocab_size=len(vocab) + 8,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=37,
        max_position_embeddings=66,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
    )
    return RobertaModel(config), RobertaTokenizer(vocab=vocab, merges=merges)


def _vit(folder: Path):
    from transformers import ViTConfig, ViTImageProcessor, ViTModel

    config = ViTConfig(
        image_size=32,
        patch_size=8,
        num_channels=3,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=37,
    )
    processor = ViTImageProcessor(
        size={"height": 32, "width": 32}, image_mean=[0.5, 0.5, 0.5], image_std=[0.25, 0.25, 0.25]
    )
    return ViTModel(config), processor


def _wordpiece_vocab(folder: Path) -> str:
    path = folder / "vocab.txt"
    path.write_text("\n".join(BERT_SPECIALS + WORDS) + "\n", encoding="utf-8")
    return str(path)


def _llama(folder: Path):
    """A 2-block Llama with tied embeddings and a word-level tokenizer with a ChatML chat template."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(dict.fromkeys(CHAT_SPECIALS + CHAT_WORDS + WORDS))}
    core = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = Whitespace()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token="<s>", eos_token="<|im_end|>", pad_token="<pad>", unk_token="<unk>"
    )
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>"]})
    tokenizer.chat_template = CHAT_TEMPLATE
    config = LlamaConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        tie_word_embeddings=True,
        bos_token_id=vocab["<s>"],
        eos_token_id=vocab["<|im_end|>"],
        pad_token_id=vocab["<pad>"],
    )
    return LlamaForCausalLM(config), tokenizer


_BUILDERS = {"bert": _bert, "distilbert": _distilbert, "roberta": _roberta, "vit": _vit, "llama": _llama}
