"""Each preprocessing option, on the Arrow tokeniser."""

from __future__ import annotations

import pyarrow as pa
import pytest

from rnnlib.config import PreprocessConfig
from rnnlib.prepare.text import tokenize, with_stopword_list


def tok(text: str | None, **options) -> list[str] | None:
    return tokenize(pa.array([text], pa.string()), PreprocessConfig(**{"level": "word", **options})).to_pylist()[0]


def test_default_word_level_splits_punctuation():
    assert tok("Hello, world!") == ["Hello", ",", "world", "!"]
    assert tok("'quoted' don't") == ["'", "quoted", "'", "don't"]


def test_punctuation_keep_and_remove():
    assert tok("Hello, world!", punctuation="keep") == ["Hello,", "world!"]
    assert tok("Hello, world! 'quoted' don't", punctuation="remove") == ["Hello", "world", "quoted", "don't"]


def test_lowercase():
    assert tok("ÉCOLE Big", lowercase=True) == ["école", "big"]


def test_strip_html_and_entities():
    assert tok("one<br /><br />two &amp; <i>three</i>", strip_html=True, punctuation="keep") == [
        "one",
        "two",
        "&",
        "three",
    ]


def test_remove_parentheses():
    assert tok("the film (released 1999) is fine", remove_parentheses=True) == ["the", "film", "is", "fine"]


@pytest.mark.parametrize(
    "name,text,expected",
    [
        ("url", "see https://t.co/x?a=1 now", ["see", "<url>", "now"]),
        ("mention", "hi @bob_1, mail a@b.org", ["hi", "<mention>", ",", "mail", "a", "@", "b", ".", "org"]),
        ("hashtag", "love #NLP", ["love", "<hashtag>"]),
        ("digit", "won 3-1 in 2024", ["won", "<digit>", "-", "<digit>", "in", "<digit>"]),
    ],
)
def test_placeholders(name, text, expected):
    assert tok(text, placeholders=[name]) == expected


def test_pretokenised_placeholders_survive_punctuation_handling():
    assert tok("<<<MENTION>>> hi", punctuation="remove") == ["<<<MENTION>>>", "hi"]


def test_emoticons_kept_as_tokens():
    assert tok("great:) sad :-( <3 ok.", keep_emoticons=True) == ["great", ":)", "sad", ":-(", "<3", "ok", "."]
    assert tok("great:)", keep_emoticons=False) == ["great", ":", ")"]


def test_stopwords_use_nltk_english_list():
    assert tok("this is not the best film", stopwords=True) == ["best", "film"]


def test_a_stopword_list_of_ones_own_replaces_nltks():
    assert tok("this is not the best film", stopwords=True, stopword_list=["best", "this"]) == [
        "is",
        "not",
        "the",
        "film",
    ]
    with pytest.raises(ValueError, match="stopwords is false"):
        PreprocessConfig(level="word", stopword_list=["the"])


def test_tokenising_with_the_written_out_stop_words_needs_no_nltk(run_without):
    """The driver writes NLTK's list into the config it sends the workers (and into a bundle):
    they tokenise without importing NLTK, which is slow to import, or having its corpus."""
    cfg = with_stopword_list(PreprocessConfig(level="word", stopwords=True))
    assert "the" in cfg.stopword_list and len(cfg.stopword_list) > 100
    printed = run_without(
        "nltk",
        "import pyarrow as pa; from rnnlib.config import PreprocessConfig; from rnnlib.prepare.text import tokenize; "
        f"cfg = PreprocessConfig.model_validate_json({cfg.model_dump_json()!r}); "
        "print(tokenize(pa.array(['this is not the best film']), cfg).to_pylist())",
    )
    assert printed == "[['best', 'film']]"


def test_porter_stemming():
    assert tok("running runs easily", stem=True) == ["run", "run", "easili"]


def test_char_level_and_accent_stripping():
    cfg = {"level": "char"}
    assert tok("Abé  Ng", **cfg) == ["A", "b", "é", " ", "N", "g"]
    assert tok("Abé", **cfg, strip_accents=True) == ["A", "b", "e"]
    assert tok("O'Neil", **cfg, punctuation="remove") == list("ONeil")


def test_unicode_normalisation_composes():
    assert tok("Cafe\u0301", unicode_form="NFC") == ["Caf\u00e9"]


@pytest.mark.parametrize("form", ["NFC", "NFKC", "NFD", "NFKD"])
def test_unicode_forms_agree_with_python_on_every_row(form):
    """Each form only runs over the rows it can change (for NFC: rows holding a character beyond
    Latin-1); the result is Python's normalisation of every row."""
    import unicodedata

    rows = [
        "Café ½ naïve",
        "Cafe\u0301",
        "Ångström \u212b",
        "ﬁne ２",
        "plain",
        "e\u0301\u00e9",
        "\u00a0nbsp\u00b2",
        "Straße ß",
        "日本語テキスト ｶﾞ",
    ]
    cfg = PreprocessConfig(level="word", unicode_form=form, punctuation="keep")
    expected = [unicodedata.normalize(form, r).split() for r in rows]
    assert tokenize(pa.array(rows, pa.string()), cfg).to_pylist() == expected


def test_words_split_on_every_unicode_white_space():
    """Words are split by the ASCII kernel once the other white space is mapped to spaces: the
    result is Arrow's Unicode split on every white-space character."""
    import pyarrow.compute as pc

    spaces = [
        chr(c)
        for c in [
            *range(0x09, 0x0E),
            *range(0x1C, 0x21),
            0x85,
            0xA0,
            0x1680,
            *range(0x2000, 0x200B),
            0x2028,
            0x2029,
            0x202F,
            0x205F,
            0x3000,
        ]
    ]
    rows = [f"a{s}b{s}{s}c{s}" for s in spaces] + ["\u200bzero-width is no space\u00ad"]
    cfg = PreprocessConfig(level="word", unicode_form=None, punctuation="keep")
    expected = pc.utf8_split_whitespace(pc.utf8_trim_whitespace(pa.array(rows))).to_pylist()
    assert tokenize(pa.array(rows, pa.string()), cfg).to_pylist() == expected
    assert expected[0] == ["a", "b", "c"]


def test_null_stays_null_and_empty_gives_no_tokens():
    out = tokenize(pa.array([None, "", "...", "ok"]), PreprocessConfig(level="word", punctuation="remove"))
    assert out.to_pylist() == [None, [], [], ["ok"]]


def test_steps_applied_to_some_rows_keep_every_row_in_place():
    """Normalisation and entity decoding run on the rows that need them only; the others and
    nulls keep their places."""
    rows = ["plain ascii", "Cafe\u0301 &amp; bar", None, "a &lt;b&gt; c", "Abé"]
    cfg = PreprocessConfig(level="word", strip_html=True, strip_accents=True, punctuation="keep")
    assert tokenize(pa.array(rows, pa.string()), cfg).to_pylist() == [
        ["plain", "ascii"],
        ["Cafe", "&", "bar"],
        None,
        ["a", "<b>", "c"],
        ["Abe"],
    ]
