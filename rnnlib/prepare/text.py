"""Vectorised text normalisation and tokenisation on Arrow arrays.

String-level steps are Arrow (RE2) kernels over the whole column. Token-level steps work on the
flattened token array with each token's row index, and lists are rebuilt from those indices, so
no step loops over rows in Python. Stemming runs once per distinct token, not per occurrence.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from functools import lru_cache

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from rnnlib.config import ConfigError, PreprocessConfig

WORD = r"\p{L}\p{N}\p{M}_"  # RE2's \w is ASCII-only
EMOTICON = r"(?:[:;=][\-'^]?(?:[)(\]\[|*]+|[dDpP]+\b)|</?3|\^_*\^)"  # :) ;-( =D :P <3 ^_^
PLACEHOLDER = r"<+[a-zA-Z_]+>+"  # ours (<url>) and pre-tokenised corpora's (<<<MENTION>>>)
PLACEHOLDER_PATTERNS = {  # applied in this order: URLs hold digits, e-mails hold @
    "url": (r"(?i)(?:https?://|www\.)\S+", " <url> "),
    "mention": (rf"(^|[^{WORD}])@[{WORD}]+", r"\1 <mention> "),
    "hashtag": (rf"(^|[^{WORD}&])#[{WORD}]+", r"\1 <hashtag> "),
    "digit": (r"\p{N}+(?:[.,:]\p{N}+)*", " <digit> "),
}
# what utf8_split_whitespace splits on beyond ASCII white space; mapped to a plain space first,
# so the faster ASCII kernel can split
OTHER_SPACES = r"[\x{1c}-\x{1f}\x{85}\x{a0}\x{1680}\x{2000}-\x{200a}\x{2028}\x{2029}\x{202f}\x{205f}\x{3000}]"
HTML_ENTITIES = {"&amp;": "&", "&lt;": "<", "&gt;": ">", "&quot;": '"', "&#39;": "'", "&nbsp;": " "}


@lru_cache(maxsize=8)
def stopword_set(language: str) -> pa.Array:
    """NLTK's stop-word list; its corpus must be installed (or NLTK_DATA point at it)."""
    from nltk.corpus import stopwords

    try:
        return pa.array(sorted(set(stopwords.words(language))), pa.string())
    except LookupError:
        raise ConfigError(
            f"NLTK's stop-word corpus for {language!r} is not installed: run "
            "`python -m nltk.downloader stopwords` or set NLTK_DATA "
            f"(now {os.environ.get('NLTK_DATA')!r})"
        ) from None


def with_stopword_list(cfg: PreprocessConfig) -> PreprocessConfig:
    """`cfg` with its stop words written out: NLTK's list read here, once, so the processes that
    tokenise (Dask workers, a scoring machine) need neither NLTK, slow to import, nor its corpus."""
    if not cfg.stopwords or cfg.stopword_list is not None:
        return cfg
    return cfg.model_copy(update={"stopword_list": stopword_set(cfg.stopwords_language).to_pylist()})


@lru_cache(maxsize=8)
def _listed(words: tuple[str, ...]) -> pa.Array:
    return pa.array(sorted(set(words)), pa.string())


@lru_cache(maxsize=1)
def _stemmer():
    from nltk.stem import PorterStemmer

    return PorterStemmer()


def _rows_with_bytes(text: pa.Array, hit: Callable[[np.ndarray], np.ndarray]) -> pa.Array:
    """Rows holding a byte for which `hit` (a vectorised test of UTF-8 bytes) is true: one numpy
    pass over the column's data buffer, several times faster than a substring kernel."""
    offsets = np.frombuffer(text.buffers()[1], np.int64 if pa.types.is_large_string(text.type) else np.int32)
    offsets = offsets[text.offset : text.offset + len(text) + 1]
    rows = np.zeros(len(text), dtype=bool)
    if len(text) and text.buffers()[2] is not None:
        data = np.frombuffer(text.buffers()[2], np.uint8)[offsets[0] : offsets[-1]]
        positions = np.flatnonzero(hit(data)) + offsets[0]
        rows[np.searchsorted(offsets, positions, side="right") - 1] = True
    return pc.and_(pa.array(rows), pc.is_valid(text))


def _where(text: pa.Array, rows: pa.Array, step) -> pa.Array:
    """`step` applied to the rows flagged in `rows` only: most steps change few rows, and a pass
    over those is much cheaper than one over the whole column."""
    rows = pc.fill_null(rows, False)
    if not pc.any(rows).as_py():
        return text
    return pc.replace_with_mask(text, rows, step(text.filter(rows)))


def _unicode(text: pa.Array, cfg: PreprocessConfig) -> pa.Array:
    """Unicode normalisation and accent stripping, on the rows some form can change: not the
    pure-ASCII ones, and for NFC alone not those whose other characters are all Latin-1
    (U+0080-U+00FF: each is NFC-stable and none combines with a neighbour). In UTF-8 a byte of
    0xC4 or more starts every character beyond Latin-1: 1% of the non-ASCII IMDB reviews."""

    def step(rows: pa.Array) -> pa.Array:
        rows = pc.utf8_normalize(rows, form="NFD" if cfg.strip_accents else cfg.unicode_form)
        if cfg.strip_accents:
            rows = pc.replace_substring_regex(rows, r"\p{Mn}+", "")
            if cfg.unicode_form:
                rows = pc.utf8_normalize(rows, form=cfg.unicode_form)
        return rows

    first_changeable = 0xC4 if cfg.unicode_form == "NFC" and not cfg.strip_accents else 0x80
    return _where(text, _rows_with_bytes(text, lambda b: b >= first_changeable), step)


def _html(text: pa.Array) -> pa.Array:
    """Tags become spaces; the common entities are decoded, on the rows holding an "&" only.
    The commonest tag goes first by a literal search, 3.5 times faster than the tag regex,
    which then only runs over the rows still holding a "<"."""
    text = pc.replace_substring(text, "<br />", " ")
    text = _where(
        text,
        _rows_with_bytes(text, lambda b: b == ord("<")),
        lambda rows: pc.replace_substring_regex(rows, r"</?[a-zA-Z!][^>]*>", " "),
    )

    def entities(rows: pa.Array) -> pa.Array:
        for entity, char in HTML_ENTITIES.items():
            rows = pc.replace_substring(rows, entity, char)
        return rows

    return _where(text, _rows_with_bytes(text, lambda b: b == ord("&")), entities)


def normalise(text: pa.Array, cfg: PreprocessConfig) -> pa.Array:
    """String-level steps, in the order the config lists them."""
    if cfg.unicode_form or cfg.strip_accents:
        text = _unicode(text, cfg)
    if cfg.strip_html:
        text = _html(text)
    if cfg.lowercase:
        text = pc.utf8_lower(text)
    for name, (pattern, replacement) in PLACEHOLDER_PATTERNS.items():
        if name in cfg.placeholders:
            text = pc.replace_substring_regex(text, pattern, replacement)
    if cfg.remove_parentheses:
        text = pc.replace_substring_regex(text, r"\([^()]*\)", " ")
    return text


def _rebuild(values: pa.Array, parents: np.ndarray, n_rows: int, null_rows: pa.Array) -> pa.Array:
    """Lists from flat values and each value's (non-decreasing) row index."""
    counts = np.bincount(parents, minlength=n_rows) if len(parents) else np.zeros(n_rows, np.int64)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), values, mask=null_rows)


def _punctuation(text: pa.Array, cfg: PreprocessConfig) -> pa.Array:
    """Split punctuation into tokens of its own, or remove it, in one regex pass. Apostrophes
    inside words stay; placeholders and (when kept) emoticons are spared: the protected
    alternative is tried first at each position and written back unchanged. That alternative
    triples the pass's cost, so it only runs over the rows that contain something protected."""
    apostrophes = r"(?:^|\s)('+)|('+)(?:\s|$)"
    if cfg.punctuation == "split":  # the punctuation and edge apostrophes become tokens
        plain, rewrite, protected_rewrite = rf"([^{WORD}\s'])|{apostrophes}", r" \1\2\3 ", r" \1\2\3\4 "
    else:  # matching white space too would make a match of every gap, far slower
        plain, rewrite, protected_rewrite = rf"[^{WORD}\s']+|{apostrophes}", " ", r" \1 "
    protected = PLACEHOLDER + (f"|{EMOTICON}" if cfg.keep_emoticons else "")
    first_bytes = np.frombuffer(b"<:;=^" if cfg.keep_emoticons else b"<", np.uint8)
    out = pc.replace_substring_regex(text, plain, rewrite)
    # the protected regex only looks at rows holding a byte a protected item can start with
    has_protected = _rows_with_bytes(text, lambda b: np.isin(b, first_bytes)).to_numpy(zero_copy_only=False)
    candidates = text.filter(pa.array(has_protected))  # valid rows only: no null to fill
    has_protected[has_protected] = pc.match_substring_regex(candidates, protected).to_numpy(zero_copy_only=False)
    if has_protected.any():
        has_protected = pa.array(has_protected)
        special = pc.replace_substring_regex(text.filter(has_protected), rf"({protected})|{plain}", protected_rewrite)
        out = pc.replace_with_mask(out, has_protected, special)
    return out


def _stem(words: pa.Array) -> pa.Array:
    stemmer = _stemmer()
    return pa.array([stemmer.stem(w) for w in words.to_pylist()], pa.string())


def _characters(text: pa.Array) -> pa.Array:
    """Each string as a list of its characters, via one UTF-32 view of the whole column."""
    text = pc.utf8_trim_whitespace(pc.replace_substring_regex(text, r"\s+", " "))
    null_rows = pc.is_null(text)
    filled = pc.fill_null(text, "")
    offsets = np.frombuffer(filled.buffers()[1], np.int32)[filled.offset :][: len(filled) + 1]
    utf8 = filled.buffers()[2].to_pybytes()[offsets[0] : offsets[-1]] if len(filled) else b""
    points = np.frombuffer(utf8.decode("utf-8").encode("utf-32-le"), dtype=np.uint32)
    distinct, inverse = np.unique(points, return_inverse=True)
    chars = pa.DictionaryArray.from_arrays(
        pa.array(inverse.astype(np.int32)), pa.array([chr(c) for c in distinct], pa.string())
    )
    lengths = pc.utf8_length(filled).to_numpy()
    parents = np.repeat(np.arange(len(filled)), lengths)
    return _rebuild(chars, parents, len(filled), null_rows)


def tokenize(text: pa.Array, cfg: PreprocessConfig) -> pa.Array:
    """Arrow string array -> list<dictionary<int32, string>> tokens (null stays null).

    Dictionary-encoded tokens are what Parquet stores anyway; keeping them so spares the writer
    re-hashing every token, and readers look up each distinct token once."""
    if isinstance(text, pa.ChunkedArray):
        text = text.combine_chunks()
    text = normalise(text, cfg)
    if cfg.level == "char":
        if cfg.punctuation == "remove":
            text = pc.replace_substring_regex(text, rf"[^{WORD}\s]+", "")
        return _characters(text)
    if cfg.punctuation != "keep":
        text = _punctuation(text, cfg)
    text = _where(
        text,
        _rows_with_bytes(text, lambda b: (b >= 0x80) | ((b >= 0x1C) & (b <= 0x1F))),
        lambda rows: pc.replace_substring_regex(rows, OTHER_SPACES, " "),
    )
    text = pc.ascii_trim_whitespace(text)
    lists = pc.ascii_split_whitespace(text)  # = utf8_split_whitespace, now that all spaces are ASCII
    blank = pc.fill_null(pc.equal(text, ""), False)  # "" splits into [""], not []
    if pc.any(blank).as_py():
        lists = pc.if_else(blank, pa.scalar([], lists.type), lists)
    if not (cfg.stopwords or cfg.stem):
        encoded = pc.dictionary_encode(pc.list_flatten(lists))
        return pa.ListArray.from_arrays(lists.offsets, encoded, mask=pc.is_null(lists))
    # Per distinct token, not per occurrence: stop-word lookups and stemming see each word once.
    encoded = pc.dictionary_encode(pc.list_flatten(lists))
    words, indices = encoded.dictionary, encoded.indices
    parents = pc.list_parent_indices(lists).to_numpy()
    if cfg.stopwords:
        listed = cfg.stopword_list
        stop = _listed(tuple(listed)) if listed is not None else stopword_set(cfg.stopwords_language)
        keep = pc.invert(pc.is_in(words, value_set=stop))
        kept = keep.take(indices)
        indices, parents = indices.filter(kept), parents[kept.to_numpy(zero_copy_only=False)]
    if cfg.stem:
        words = _stem(words)
    return _rebuild(pa.DictionaryArray.from_arrays(indices, words), parents, len(text), pc.is_null(text))
