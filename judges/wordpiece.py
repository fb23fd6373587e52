"""Pure-Python BERT WordPiece tokenizer, equal to the fast HF tokenizer of all-MiniLM-L6-v2.

BertNormalizer (clean text, pad CJK, strip accents, lowercase) + BertPreTokenizer (split on
whitespace, isolate punctuation) + greedy longest-match WordPiece + [CLS]/[SEP]; re-exported by
:mod:`judges.minilm`, whose tests check token ids against the reference tokenizer.
"""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path

__all__ = ["WordPieceTokenizer", "normalize_text", "pre_tokenize"]

_SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
_MAX_CHARS_PER_WORD = 100
# CJK Unified Ideographs blocks, exactly as in HF BertNormalizer (handle_chinese_chars).
_CJK_RANGES: tuple[tuple[int, int], ...] = (
    (0x4E00, 0x9FFF),
    (0x3400, 0x4DBF),
    (0x20000, 0x2A6DF),
    (0x2A700, 0x2B73F),
    (0x2B740, 0x2B81F),
    (0x2B820, 0x2CEAF),
    (0xF900, 0xFAFF),
    (0x2F800, 0x2FA1F),
)


def _is_control(ch: str) -> bool:
    if ch in "\t\n\r":
        return False
    return unicodedata.category(ch).startswith("C")


def _is_whitespace(ch: str) -> bool:
    # Rust char::is_whitespace (Unicode White_Space), which the fast tokenizer uses.
    return ch in "\t\n\r " or ch.isspace()


def _is_punctuation(ch: str) -> bool:
    cp = ord(ch)
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(ch).startswith("P")


def _is_cjk(ch: str) -> bool:
    cp = ord(ch)
    return any(lo <= cp <= hi for lo, hi in _CJK_RANGES)


def _normalize_char(ch: str) -> str:
    """BertNormalizer for one character: clean, pad CJK, NFD + drop Mn, lowercase."""
    if ch in ("\x00", "\ufffd") or _is_control(ch):
        return ""
    if _is_whitespace(ch):
        return " "
    if _is_cjk(ch):
        return f" {ch} "
    decomposed = unicodedata.normalize("NFD", ch)
    # Per-character lowercase like Rust's char::to_lowercase (no final-sigma context rule).
    return "".join(c.lower() for c in decomposed if unicodedata.category(c) != "Mn")


class _NormalizeTable(dict[int, str]):
    """``str.translate`` table that computes and memoises :func:`_normalize_char` per code point."""

    def __missing__(self, cp: int) -> str:
        value = _normalize_char(chr(cp))
        self[cp] = value
        return value


class _PunctuationTable(dict[str, bool]):
    def __missing__(self, ch: str) -> bool:
        value = _is_punctuation(ch)
        self[ch] = value
        return value


_NORMALIZE = _NormalizeTable()
_IS_PUNCT = _PunctuationTable()


def normalize_text(text: str) -> str:
    """BertNormalizer(clean_text, handle_chinese_chars, strip_accents=None→on, lowercase).

    Applied per code point (memoised); this equals whole-string NFD except for the canonical
    re-ordering of combining marks, which only affects marks that are dropped anyway.
    """
    return text.translate(_NORMALIZE)


def pre_tokenize(text: str) -> list[str]:
    """BertPreTokenizer on normalised text: split on spaces, isolate each punctuation char."""
    words: list[str] = []
    for chunk in text.split(" "):
        if chunk.isalnum():
            words.append(chunk)
        elif chunk:
            _split_punctuation(chunk, words)
    return words


def _split_punctuation(chunk: str, words: list[str]) -> None:
    start = 0
    for pos, ch in enumerate(chunk):
        if _IS_PUNCT[ch]:
            if pos > start:
                words.append(chunk[start:pos])
            words.append(ch)
            start = pos + 1
    if start < len(chunk):
        words.append(chunk[start:])


class WordPieceTokenizer:
    """Pure-Python equivalent of the fast HF tokenizer shipped with all-MiniLM-L6-v2."""

    def __init__(self, vocab: dict[str, int]) -> None:
        """Build from a token→id mapping (see :meth:`from_vocab_file`)."""
        self.vocab = vocab
        self.unk_id = vocab["[UNK]"]
        self.cls_id = vocab["[CLS]"]
        self.sep_id = vocab["[SEP]"]
        self.pad_id = vocab["[PAD]"]
        # Like the fast tokenizer, literal special tokens in the raw text map to their own ids.
        specials = "|".join(re.escape(t) for t in _SPECIAL_TOKENS if t in vocab)
        self._special_re = re.compile(f"({specials})")
        self._word_cache: dict[str, list[int]] = {}

    @classmethod
    def from_vocab_file(cls, path: Path) -> WordPieceTokenizer:
        """Load ``vocab.txt`` (one token per line, line number = id)."""
        lines = path.read_text(encoding="utf-8").split("\n")
        if lines and lines[-1] == "":
            lines.pop()
        return cls({tok: idx for idx, tok in enumerate(lines)})

    def _wordpiece(self, word: str) -> list[int]:
        if len(word) > _MAX_CHARS_PER_WORD:
            return [self.unk_id]
        ids: list[int] = []
        start = 0
        while start < len(word):
            end = len(word)
            match: int | None = None
            while start < end:
                piece = word[start:end] if start == 0 else "##" + word[start:end]
                match = self.vocab.get(piece)
                if match is not None:
                    break
                end -= 1
            if match is None:
                return [self.unk_id]
            ids.append(match)
            start = end
        return ids

    def _word_ids(self, word: str) -> list[int]:
        cached = self._word_cache.get(word)
        if cached is None:
            cached = self._wordpiece(word)
            if len(self._word_cache) < 200_000:
                self._word_cache[word] = cached
        return cached

    def encode(self, text: str, max_length: int = 256) -> list[int]:
        """Token ids with [CLS]/[SEP], truncated to ``max_length`` ids in total."""
        if max_length < 2:
            raise ValueError("max_length must be >= 2")
        budget = max_length - 2
        ids = self._content_ids(text, budget)
        return [self.cls_id, *ids[:budget], self.sep_id]

    def _content_ids(self, text: str, budget: int) -> list[int]:
        ids: list[int] = []
        for i, part in enumerate(self._special_re.split(text)):
            if i % 2:  # odd parts are the captured special tokens
                ids.append(self.vocab[part])
                continue
            for word in pre_tokenize(normalize_text(part)):
                ids.extend(self._word_ids(word))
                if len(ids) >= budget:
                    return ids
        return ids
