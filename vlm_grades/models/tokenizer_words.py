"""Word-level tokenizer for the `tiny` nanoVLM, built from the training texts and saved with the checkpoint."""
from __future__ import annotations

from collections import Counter
from typing import Iterable

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers
from transformers import PreTrainedTokenizerFast

PAD, EOS, UNK, IMAGE = "<pad>", "<eos>", "<unk>", "<image>"


def build_word_tokenizer(texts: Iterable[str], min_count: int = 1) -> PreTrainedTokenizerFast:
    """Words and punctuation become one token each; specials first so their ids are fixed (0..3)."""
    splitter = pre_tokenizers.Whitespace()
    counts: Counter[str] = Counter()
    for text in texts:
        counts.update(piece for piece, _ in splitter.pre_tokenize_str(text.lower()))
    vocab = {tok: i for i, tok in enumerate((PAD, EOS, UNK, IMAGE))}
    for word in sorted(w for w, c in counts.items() if c >= min_count):
        vocab.setdefault(word, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = splitter
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=PAD, eos_token=EOS, unk_token=UNK,
                                   additional_special_tokens=[IMAGE])
    return fast
