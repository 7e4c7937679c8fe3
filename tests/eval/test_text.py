import importlib.util

import pytest
import torch

from sfmp_compile.eval import text
from sfmp_compile.eval.text import (calibration_batches, eval_tokens, load_text, strip_wiki_markup,
                               wiki_articles, wiki_split)

MARKUP = ("[[", "]]", "{{", "}}", "{|", "|}", "<ref", "</ref", "<!--", "'''", "==")


class CharTokenizer:
    """Minimal stand-in with the one call text.py makes; ids are code points mod 256."""

    def __call__(self, s, add_special_tokens=False):
        return {"input_ids": [ord(c) % 256 for c in s]}


@pytest.fixture(scope="module")
def articles():
    return wiki_articles()


def test_strip_wiki_markup_handles_the_usual_constructs():
    raw = """{{Infobox thing|name={{nested|x}}|size=3}}
'''Alpha''' is a [[Greek alphabet|letter]] of the [[alphabet]].<ref name="a">Cite {{cite web|url=x}}</ref>
It was used in [http://example.com ancient texts] and <!-- hidden --> ''many'' other places.<ref name="b"/>
[[File:Alpha.png|thumb|An [[uppercase]] alpha, see Bicyclo[1.1.0]butane.]]
{| class="wikitable"
| a || b {{x}}
|}
== History ==
* Early use&nbsp;in <small>Phoenicia</small>.
[[Category:Letters]]
[[de:Alpha]]
== References ==
{{reflist}}
Everything after References is dropped."""
    clean = strip_wiki_markup(raw)
    assert clean.startswith("Alpha is a letter of the alphabet.")
    assert "used in ancient texts and many other places." in clean
    assert "History\nEarly use in Phoenicia." in clean
    for bad in MARKUP + ("Infobox", "Cite", "thumb", "Category", "Alpha.png", "wikitable", "de:", "dropped"):
        assert bad not in clean, bad


def test_wiki_articles_are_clean_prose(articles):
    assert len(articles) >= 90
    titles = [t for t, _ in articles]
    assert len(set(titles)) == len(titles) and titles[0] == "Anarchism"
    for title, body in articles:
        assert len(body) >= text.MIN_ARTICLE_CHARS, title
        assert not body.upper().startswith("#REDIRECT")
        for bad in ("[[", "{{", "<ref"):
            assert bad not in body, (title, bad)


def test_wiki_split_takes_start_and_end_without_overlap(articles):
    calib, evaluation = wiki_split(n_calibration_articles=10, n_eval_articles=5)
    assert calib == articles[:10] and evaluation == articles[-5:]
    calib, evaluation = wiki_split(n_calibration_articles=len(articles) - 1, n_eval_articles=1)
    assert not {t for t, _ in calib} & {t for t, _ in evaluation}
    with pytest.raises(ValueError, match="only"):
        wiki_split(n_calibration_articles=len(articles), n_eval_articles=1)


def test_missing_wiki_file_is_a_clear_error(monkeypatch, tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        wiki_articles(tmp_path / "missing.xml.bz2")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "gensim" else real(name, *a))
    with pytest.raises(FileNotFoundError, match="pip install --no-deps gensim"):
        wiki_split()


def test_calibration_batches_shapes_and_seed():
    tok = CharTokenizer()
    batches = calibration_batches(tok, n_sequences=5, seq_len=64, seed=1)
    assert len(batches) == 5
    assert all(b.shape == (1, 64) and b.dtype == torch.long for b in batches)
    again = calibration_batches(tok, n_sequences=5, seq_len=64, seed=1)
    other = calibration_batches(tok, n_sequences=5, seq_len=64, seed=2)
    assert all(torch.equal(a, b) for a, b in zip(batches, again))
    assert not all(torch.equal(a, b) for a, b in zip(batches, other))


def test_eval_tokens_come_from_the_evaluation_articles():
    tok = CharTokenizer()
    tokens = eval_tokens(tok, n_tokens=300)
    assert tokens.shape == (1, 300) and tokens.dtype == torch.long
    _, evaluation = wiki_split()
    assert "".join(map(chr, tokens[0].tolist())) == evaluation[0][1][:300]


def test_local_text_file(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("the quick brown fox jumps over the lazy dog. " * 40, encoding="utf-8")
    body = load_text(path)
    batches = calibration_batches(CharTokenizer(), n_sequences=3, seq_len=100, text=body)
    assert [b.shape for b in batches] == [(1, 100)] * 3
    assert eval_tokens(CharTokenizer(), n_tokens=50, text=body).shape == (1, 50)
    with pytest.raises(ValueError, match="only"):
        eval_tokens(CharTokenizer(), n_tokens=10**6, text=body)
    with pytest.raises(ValueError, match="fewer than seq_len"):
        calibration_batches(CharTokenizer(), seq_len=10**6, text=body)


def test_load_text_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        load_text(tmp_path / "absent.txt")
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n")
    with pytest.raises(ValueError, match="empty"):
        load_text(empty)


def test_text_halves_split_a_file_and_default_to_the_wiki(tmp_path):
    from sfmp_compile.eval.text import text_halves
    path = tmp_path / "t.txt"
    path.write_text("abcdefgh")
    assert text_halves(str(path)) == ("abcd", "efgh")
    assert text_halves(None) == (None, None)
    with pytest.raises(FileNotFoundError):
        text_halves(str(tmp_path / "missing.txt"))
