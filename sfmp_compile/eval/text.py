"""Real text for calibration and evaluation: a Wikipedia excerpt shipped in gensim's wheel, or any file.

gensim 4.4.0 ships ~200 pages of an English Wikipedia dump as test data. We read it with the standard
library only (gensim's own modules need scipy, which is not installed), strip the wiki markup with a
small regex-based stripper, and split the articles: calibration from the start of the file, evaluation
from the end, never the same article in both.
"""
from __future__ import annotations

import bz2
import functools
import html
import importlib.util
import random
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import torch

WIKI_FILE = "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
MIN_ARTICLE_CHARS = 500  # stubs shorter than this are mostly leftover list/markup fragments

# Sections after which a Wikipedia article is bibliography and link lists, not prose.
_TAIL_SECTIONS = re.compile(
    r"^==+\s*(references|notes|footnotes|citations|see also|external links|further reading|"
    r"bibliography|sources)\s*==+\s*$", re.IGNORECASE | re.MULTILINE)
_COMMENT = re.compile(r"<!--.*?(-->|$)", re.DOTALL)
_REF = re.compile(r"<ref[^>/]*/>|<ref[^>]*>.*?</ref\s*>", re.DOTALL | re.IGNORECASE)
# Tags whose content is not prose (formulas, galleries, code ...): drop content and tags.
_DROP_BLOCK = re.compile(r"<(math|gallery|timeline|syntaxhighlight|source|score|imagemap|chem|hiero)"
                         r"\b[^>]*>.*?</\1\s*>", re.DOTALL | re.IGNORECASE)
_TAG = re.compile(r"</?[a-zA-Z][^<>]*/?>")
# Innermost wiki link: [[target]] or [[target|label]]; the label may hold single brackets
# ("Bicyclo[1.1.0]butane" in an image caption) but no [[ or ]].
_LINK = re.compile(r"\[\[([^\[\]|]*)(?:\|((?:[^\[\]]|\[(?!\[)|\](?!\]))*))?\]\]")
# Link targets that are not prose: files, categories, interlanguage links ("de:", "simple:" ...).
_NON_PROSE_LINK = re.compile(r"^\s*:?\s*(file|image|media|category|wikipedia|wp|help|portal|template|talk|user|"
                             r"[a-z]{2,3}(-[a-z]+)?|simple|wikt|"
                             r"wiktionary|commons|wikisource|s|q|n|b|v|voy)\s*:", re.IGNORECASE)
_EXT_LINK = re.compile(r"\[(?:https?:|ftp:)?//[^\s\]]*\s*([^\]]*)\]")
_BARE_URL = re.compile(r"https?://\S+")
_HEADING = re.compile(r"^(=+)\s*(.*?)\s*\1\s*$", re.MULTILINE)
_LIST_MARK = re.compile(r"^[*#:;]+\s*", re.MULTILINE)
_QUOTES = re.compile(r"'{2,}")
_SWITCH = re.compile(r"__[A-Z]+__")
# Parentheses left empty once pronunciation/language templates are gone: "Asia ()".
_EMPTY_PARENS = re.compile(r" ?\(\s*(?:[,;:]\s*)*\)")
_STRAY = re.compile(r"\{\{|\}\}|\{\||\|\}|\[\[|\]\]")


def _drop_nested(text: str, open_: str, close: str) -> str:
    """Remove every balanced ``open_ ... close`` span, nested ones included, in one linear scan."""
    out, depth, i, start = [], 0, 0, 0
    n, lo, lc = len(text), len(open_), len(close)
    while i < n:
        if text.startswith(open_, i):
            if depth == 0:
                out.append(text[start:i])
            depth += 1
            i += lo
        elif depth and text.startswith(close, i):
            depth -= 1
            i += lc
            if depth == 0:
                start = i
        else:
            i += 1
    if depth == 0:
        out.append(text[start:])
    # An unclosed span swallows the rest: for templates/tables that is the right call (it is markup).
    return "".join(out)


def _link_text(match: re.Match) -> str:
    target, label = match.group(1), match.group(2)
    if _NON_PROSE_LINK.match(target):
        return ""
    text = label if label is not None else target
    return text.split("|")[-1] if "|" in text else text


def strip_wiki_markup(wikitext: str) -> str:
    """Turn MediaWiki source into plain prose (paragraphs separated by blank lines)."""
    text = _COMMENT.sub("", wikitext)
    tail = _TAIL_SECTIONS.search(text)
    if tail:
        text = text[:tail.start()]
    text = _REF.sub("", text)
    text = _DROP_BLOCK.sub("", text)
    text = _drop_nested(text, "{{", "}}")
    text = _drop_nested(text, "{|", "|}")
    # Resolve innermost links first so a file caption's inner links don't break the outer [[File:...]].
    while True:
        new = _LINK.sub(_link_text, text)
        if new == text:
            break
        text = new
    text = _EXT_LINK.sub(r"\1", text)
    text = _BARE_URL.sub("", text)
    text = _TAG.sub("", text)
    text = _HEADING.sub(r"\2", text)
    text = _LIST_MARK.sub("", text)
    text = _QUOTES.sub("", text)
    text = _SWITCH.sub("", text)
    text = _STRAY.sub("", text)
    text = _EMPTY_PARENS.sub("", text)
    text = html.unescape(text).replace("\xa0", " ")
    lines = [re.sub(r"[ \t]+", " ", line).strip() for line in text.splitlines()]
    text = "\n".join(lines)
    return re.sub(r"\n{3,}", "\n\n", text).strip()


def wiki_path() -> Path:
    """Path of the Wikipedia excerpt inside the installed gensim package (found without importing it)."""
    spec = importlib.util.find_spec("gensim")
    locations = list(spec.submodule_search_locations or []) if spec else []
    for loc in locations:
        path = Path(loc) / "test" / "test_data" / WIKI_FILE
        if path.is_file():
            return path
    raise FileNotFoundError(
        f"Wikipedia excerpt {WIKI_FILE} not found: install it with `pip install --no-deps gensim==4.4.0`"
        + (f" (gensim found at {locations} but without its test data)" if locations else ""))


@functools.lru_cache(maxsize=4)
def _wiki_articles(path: str) -> tuple[tuple[str, str], ...]:
    articles = []
    with bz2.open(path, "rb") as stream:
        for _, elem in ET.iterparse(stream, events=("end",)):
            if elem.tag.rsplit("}", 1)[-1] != "page":
                continue
            fields = {child.tag.rsplit("}", 1)[-1]: child for child in elem.iter()}
            is_article = fields.get("ns") is not None and (fields["ns"].text or "").strip() == "0"
            raw = fields["text"].text if "text" in fields else None
            title = (fields["title"].text or "") if "title" in fields else ""
            # Disambiguation pages are bare lists of links, not prose.
            is_article = is_article and not title.endswith("(disambiguation)")
            if is_article and "redirect" not in fields and raw and not raw.lstrip().upper().startswith("#REDIRECT"):
                text = strip_wiki_markup(raw)
                if len(text) >= MIN_ARTICLE_CHARS:
                    articles.append((title, text))
            elem.clear()  # keep memory flat while streaming
    return tuple(articles)


def wiki_articles(path: str | Path | None = None) -> list[tuple[str, str]]:
    """All prose articles of the Wikipedia excerpt as ``(title, plain_text)``, in file order.

    Redirects, non-article namespaces and articles shorter than ``MIN_ARTICLE_CHARS`` after stripping
    are dropped. Parsing takes a few seconds and is cached per process.
    """
    path = Path(path) if path is not None else wiki_path()
    if not path.is_file():
        raise FileNotFoundError(f"Wikipedia dump not found: {path}")
    return list(_wiki_articles(str(path)))


def wiki_split(n_calibration_articles: int = 64, n_eval_articles: int = 32,
               path: str | Path | None = None) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """Split the excerpt into ``(calibration, evaluation)`` lists of ``(title, text)`` articles.

    Calibration comes from the start of the file, evaluation from the end, so the two never share an
    article; asking for more articles than exist raises ``ValueError``.
    """
    articles = wiki_articles(path)
    if n_calibration_articles < 1 or n_eval_articles < 1:
        raise ValueError("need at least one calibration and one evaluation article")
    if n_calibration_articles + n_eval_articles > len(articles):
        raise ValueError(f"asked for {n_calibration_articles} calibration + {n_eval_articles} evaluation "
                         f"articles but the excerpt has only {len(articles)}")
    calibration = articles[:n_calibration_articles]
    evaluation = articles[len(articles) - n_eval_articles:]
    assert not {t for t, _ in calibration} & {t for t, _ in evaluation}, "calibration/eval overlap"
    return calibration, evaluation


def load_text(path: str | Path) -> str:
    """Read a UTF-8 text file; ``ValueError``/``FileNotFoundError`` with the path if unusable."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"text file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise ValueError(f"cannot read text file {path}: {exc}") from exc
    if not text.strip():
        raise ValueError(f"text file is empty: {path}")
    return text


def text_halves(path: str | Path | None) -> tuple[str | None, str | None]:
    """(calibration text, evaluation text): the first and second halves of the file at ``path``, so
    the two never share text; ``(None, None)`` without a path (``wiki_split``'s articles then)."""
    if not path:
        return None, None
    text = load_text(path)
    half = len(text) // 2
    return text[:half], text[half:]


def _token_ids(tokenizer, texts, limit: int | None = None) -> torch.Tensor:
    """Token ids of ``texts`` run together as one 1-D long tensor, stopping once ``limit`` are reached.

    No special tokens are added, so windows are plain running text; each text is tokenized on its own
    (with a paragraph break appended) so that we can stop early instead of tokenizing everything.
    """
    chunks, total = [], 0
    for text in texts:
        ids = tokenizer(text + "\n\n", add_special_tokens=False)["input_ids"]
        chunks.append(torch.tensor(ids, dtype=torch.long))
        total += len(ids)
        if limit is not None and total >= limit:
            break
    return torch.cat(chunks) if chunks else torch.empty(0, dtype=torch.long)


def calibration_batches(tokenizer, n_sequences: int = 16, seq_len: int = 512, seed: int = 0,
                        text: str | None = None, n_calibration_articles: int = 64) -> list[torch.Tensor]:
    """``n_sequences`` windows of running text, each a ``LongTensor [1, seq_len]``.

    The source is ``text`` if given (e.g. ``load_text(path)``; used as is, so pass a different text to
    ``eval_tokens``), else the calibration articles of ``wiki_split``.
    Windows start at random token offsets (``seed``); distinct offsets are used while the text allows.
    """
    texts = [text] if text is not None else [t for _, t in wiki_split(n_calibration_articles)[0]]
    ids = _token_ids(tokenizer, texts)
    if ids.numel() < seq_len:
        raise ValueError(f"calibration text has {ids.numel()} tokens, fewer than seq_len={seq_len}")
    n_starts = ids.numel() - seq_len + 1
    rng = random.Random(seed)
    starts = rng.sample(range(n_starts), n_sequences) if n_sequences <= n_starts else \
        [rng.randrange(n_starts) for _ in range(n_sequences)]
    return [ids[s:s + seq_len].unsqueeze(0) for s in starts]


def eval_tokens(tokenizer, n_tokens: int = 8192, text: str | None = None,
                n_eval_articles: int = 32) -> torch.Tensor:
    """The first ``n_tokens`` tokens of the evaluation text, as ``LongTensor [1, n_tokens]``.

    The source is ``text`` if given (used as is), else the evaluation articles of ``wiki_split``. Raises ``ValueError`` if there are fewer tokens than asked.
    """
    texts = [text] if text is not None else [t for _, t in wiki_split(n_eval_articles=n_eval_articles)[1]]
    ids = _token_ids(tokenizer, texts, limit=n_tokens)
    if ids.numel() < n_tokens:
        raise ValueError(f"evaluation text has only {ids.numel()} tokens, asked for {n_tokens}")
    return ids[:n_tokens].unsqueeze(0)

