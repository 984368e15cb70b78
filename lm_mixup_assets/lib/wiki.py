"""Encyclopedic paragraphs for MIXTURE (docs/method.md, MIXTURE): a Wikipedia dump → clean prose paragraphs.

Pure Python (gensim's dump reader + regexes); no Dagster.

The pipeline
------------
1. A ``*-pages-articles*.xml.bz2`` dump is streamed page by page in constant
   memory and each page goes through gensim's ``segment_wiki.segment`` (in a
   process pool for a full dump), giving ``(title, [(section, text)])`` per
   article with gensim's ``segment_all_articles`` filters (redirects, stubs and
   non-article namespaces dropped).  The
   section text has already been through ``gensim.corpora.wikicorpus.filter_wiki``;
   sections whose text still holds link/template/ref markup get a second pass
   (the filter works outside-in, so nested markup can survive one pass).
2. Each section is cut into *units*, one per source line.  In wikitext an
   author writes one paragraph per line, and ``filter_wiki`` turns an image
   (``[[File:...|thumb|caption]]``) into a bare caption line glued above the
   next paragraph with a single newline; cutting on blank lines only would
   weld captions onto paragraphs.
3. Leftover markup is cleaned (bold/italic quotes, stray brackets and braces,
   ``<ref>``/HTML tags, ``|alt=``/``px`` image residue, empty parentheses left by
   removed pronunciation templates, space before punctuation, glued sentences);
   sub-headings (``===History===``), list items (``*``, ``#``), definition and
   table lines, and captions without a sentence end are dropped.
4. Units shorter than ``min_chars`` or longer than ``max_chars``, mostly
   non-letters (tables of numbers), or from reference-like sections (References,
   External links, ...) are dropped; exact duplicates (after normalising case,
   punctuation and whitespace) are kept once.

``paragraph_id`` is a hash of title, section and text, so it is stable across
runs and does not depend on the filter settings; ``position`` is the
paragraph's index among the *kept* paragraphs of its article.

Text licence: CC BY-SA (attribute Wikipedia).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import random
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, TypeVar

import pandas as pd

__all__ = [
    "WikiParagraph",
    "WIKI_PARAGRAPH_COLUMNS",
    "PACKAGED_SAMPLE_NAME",
    "packaged_wiki_sample",
    "clean_paragraph",
    "split_units",
    "iter_wiki_paragraphs",
    "wiki_paragraphs_frame",
    "WikiReadProgress",
    "sample_wiki_paragraphs",
    "Reservoir",
    "normalised_hash",
    "paragraph_id",
]

T = TypeVar("T")

WIKI_PARAGRAPH_COLUMNS = ["paragraph_id", "title", "section", "position", "text", "n_chars"]

SMALL_DUMP_BYTES = 16 * 2**20  # compressed: read in-process by default (see iter_wiki_paragraphs)
PACKAGED_SAMPLE_NAME = "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"

# Sections whose lines are citations, link lists or navigation, not prose.
SKIP_SECTIONS = frozenset(
    s.lower()
    for s in (
        "References",
        "External links",
        "Further reading",
        "See also",
        "Notes",
        "Bibliography",
        "Sources",
        "Citations",
        "Footnotes",
        "Works cited",
        "Notes and references",
        "References and notes",
        "Literature",
        "Selected bibliography",
        "Works",
        "Discography",
        "Filmography",
        "Publications",
        "Gallery",
    )
)


@dataclass(frozen=True)
class WikiParagraph:
    paragraph_id: str
    title: str
    section: str
    position: int  # index among the kept paragraphs of the article
    text: str
    n_chars: int


# --------------------------------------------------------------------------- #
# Locating the packaged sample
# --------------------------------------------------------------------------- #
def packaged_wiki_sample() -> Path:
    """Path of the 106-article English Wikipedia extract shipped in gensim's test data.

    Found through the gensim package's location (``importlib.util.find_spec``), so
    neither ``gensim.test`` nor gensim itself is imported.
    """
    spec = importlib.util.find_spec("gensim")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("gensim is not installed; the packaged Wikipedia sample comes with gensim==4.4.0")
    for root in spec.submodule_search_locations:
        path = Path(root) / "test" / "test_data" / PACKAGED_SAMPLE_NAME
        if path.is_file():
            return path
    raise FileNotFoundError(f"{PACKAGED_SAMPLE_NAME} not found under gensim's test/test_data")


# --------------------------------------------------------------------------- #
# Cleaning
# --------------------------------------------------------------------------- #
_REF_RE = re.compile(r"<ref[^>/]*/>|<ref[^>]*>.*?</ref>|<ref[^>]*>", re.IGNORECASE | re.DOTALL)
_TAG_RE = re.compile(r"</?[a-zA-Z][a-zA-Z0-9]*(?:\s[^<>]*)?/?>")
_COMMENT_RE = re.compile(r"<!--.*?-->", re.DOTALL)
_TEMPLATE_RE = re.compile(r"\{\{[^{}]*\}\}")
_TABLE_RE = re.compile(r"\{\|.*?\|\}", re.DOTALL)
_FILE_LINK_RE = re.compile(
    r"\[\[(?:File|Image|Category|Media):[^\[\]]*(?:\[\[[^\[\]]*\]\][^\[\]]*)*\]\]", re.IGNORECASE
)
_LINK_RE = re.compile(r"\[\[(?:[^|\[\]]*\|)?([^\[\]]*)\]\]")
_EXT_LINK_RE = re.compile(r"\[(?:https?|ftp)://\S+\s*([^\]]*)\]")
_URL_RE = re.compile(r"(?:https?|ftp)://\S+")
_QUOTES_RE = re.compile(r"'{2,}")
# Image residue that filter_wiki promotes to text: "caption|alt=...", "|299x299px" glued to the next word.
_ALT_RE = re.compile(r"\|\s*(?:alt|upright|thumb|left|right|center|frameless|border)\b", re.IGNORECASE)
_PX_PREFIX_RE = re.compile(r"^.*?\|\s*\d+(?:x\d+)?px\s*")
_EMPTY_PARENS_RE = re.compile(r"\(\s*[,;:.]?\s*\)")
_OPEN_PAREN_JUNK_RE = re.compile(r"\(\s*[,;:]\s*")
_SPACE_BEFORE_PUNCT_RE = re.compile(r"\s+([,.;:!?)\]])")
_REPEATED_COMMA_RE = re.compile(r",(\s*,)+")
_GLUED_SENTENCE_RE = re.compile(r"([a-z]{2,}[.!?])([A-Z][a-z])")
_MULTISPACE_RE = re.compile(r"[ \t\u00a0\u2009\u200b\u202f]+")

_HEADING_LINE_RE = re.compile(r"^\s*=+[^=].*=+\s*$")
_LIST_OR_TABLE_LINE_RE = re.compile(r"^\s*(?:[*#:;|!]|\{\||\|\}|\|-)")
_SENTENCE_END_RE = re.compile(r"[.!?][\"'\u201d\u2019)\]]*$")
_LEFTOVER_MARKUP_RE = re.compile(r"\[\[|\]\]|\{\{|\}\}|<ref|==|\{\||\|\}")
# Markup a second filter_wiki pass can remove (sub-headings '===' are handled line by line).
_REFILTER_RE = re.compile(r"\[\[|\{\{|<ref|\{\|", re.IGNORECASE)


def clean_paragraph(text: str) -> str:
    """Remove markup that survived ``filter_wiki`` from one unit and normalise spacing."""
    t = text
    # the costly patterns only run when their trigger character is present
    if "<" in t:
        t = _COMMENT_RE.sub(" ", t)
        t = re.sub(r"<!--.*$", " ", t)  # an unclosed comment runs to the end of the unit
        t = _REF_RE.sub(" ", t)
        t = _TAG_RE.sub(" ", t)
    if "{" in t:
        t = _TABLE_RE.sub(" ", t)
        for _ in range(3):  # nested templates: innermost first
            t2 = _TEMPLATE_RE.sub(" ", t)
            if t2 == t:
                break
            t = t2
    if "[" in t:
        t = _FILE_LINK_RE.sub(" ", t)
        t = _LINK_RE.sub(r"\1", t)
        t = _EXT_LINK_RE.sub(r"\1", t)
    if "://" in t:
        t = _URL_RE.sub(" ", t)
    if "''" in t:
        t = _QUOTES_RE.sub("", t)
    if "px" in t:
        t = _PX_PREFIX_RE.sub("", t)
    # whatever braces/brackets are left are unbalanced markup fragments
    t = t.replace("[[", " ").replace("]]", " ").replace("{{", " ").replace("}}", " ")
    t = _MULTISPACE_RE.sub(" ", t)
    if "(" in t:
        t = _EMPTY_PARENS_RE.sub("", t)
        t = _OPEN_PAREN_JUNK_RE.sub("(", t)
    t = _REPEATED_COMMA_RE.sub(",", t)
    t = _SPACE_BEFORE_PUNCT_RE.sub(r"\1", t)
    t = _GLUED_SENTENCE_RE.sub(r"\1 \2", t)
    t = _MULTISPACE_RE.sub(" ", t)
    return t.strip()


def split_units(section_text: str) -> list[str]:
    """Cut a section's (filtered) text into candidate paragraphs: one per source line.

    Headings, list items, definition lines and table rows are dropped here, since
    a line-level marker is the only reliable sign of them.
    """
    units = []
    for line in section_text.split("\n"):
        if not line.strip():
            continue
        if _HEADING_LINE_RE.match(line) or _LIST_OR_TABLE_LINE_RE.match(line):
            continue
        if _ALT_RE.search(line):  # an image caption with its attributes
            continue
        units.append(line)
    return units


_LETTERS_RE = re.compile(r"[^\W\d_]+")


def _mostly_prose(text: str) -> bool:
    """False for table rows, number lists and citation-like strings."""
    letters = len(text) - len(_LETTERS_RE.sub("", text))
    if letters < 0.6 * len(text):
        return False
    # a prose paragraph has words separated by spaces, not pipes or semicolon lists
    if text.count("|") > 1 or text.count(";") > max(8, len(text) // 60):
        return False
    return True


_NORM_RE = re.compile(r"[\W_]+", re.UNICODE)


def normalised_hash(text: str) -> str:
    """Hash of the text lower-cased with punctuation and whitespace collapsed (dedup key)."""
    key = _NORM_RE.sub(" ", text.lower()).strip()
    return hashlib.sha1(key.encode("utf-8")).hexdigest()


def paragraph_id(title: str, section: str, text: str) -> str:
    """Stable id: 16 hex digits of sha1(title, section, text)."""
    return hashlib.sha1("\x1f".join((title, section, text)).encode("utf-8")).hexdigest()[:16]


# --------------------------------------------------------------------------- #
# Iteration
# --------------------------------------------------------------------------- #
def _filter_again(text: str) -> str:
    # Imported lazily: the gensim import costs ~1 s and is only needed here.
    from gensim.corpora.wikicorpus import filter_wiki

    return filter_wiki(text)


def _page_xmls(fileobj) -> Iterator[bytes]:
    """Each ``<page>`` of a MediaWiki dump as XML bytes, as gensim's ``extract_page_xmls``, in constant memory.

    gensim clears each page but leaves the empty element attached to the root, ~200 bytes per
    page (~4 GB over the ~20 M pages of a full English dump); here the root drops them too.
    """
    from xml.etree import ElementTree

    from gensim.corpora.wikicorpus import get_namespace

    events = ElementTree.iterparse(fileobj, events=("start", "end"))
    _, root = next(events)
    page_tag = f"{{{get_namespace(root.tag)}}}page"
    for event, elem in events:
        if event == "end" and elem.tag == page_tag:
            yield ElementTree.tostring(elem)
            root.clear()  # the page and any siteinfo before it


def _is_article(title: str, sections: list[tuple[str, str]], min_article_chars: int) -> bool:
    """gensim's article filters: no non-article namespaces, redirects or stubs."""
    from gensim.corpora.wikicorpus import IGNORED_NAMESPACES

    if any(title.startswith(ns + ":") for ns in IGNORED_NAMESPACES):
        return False
    if not sections or sections[0][1].lstrip().lower().startswith("#redirect"):
        return False
    return sum(len(body.strip()) for _, body in sections) >= min_article_chars


def _segment_articles(
    dump_path: str, min_article_chars: int, workers: int
) -> Iterator[tuple[str, list[tuple[str, str]]]]:
    """``(title, sections)`` of each article, as ``segment_all_articles`` gives them: gensim's
    ``segment`` per page, in this process (``workers=0``) or in a pool of ``workers`` processes
    fed one bounded group of pages at a time (a pool given the whole stream would read it all
    into memory). Stopping early is safe: the pool is terminated on close."""
    import multiprocessing

    import gensim.utils
    from gensim.scripts.segment_wiki import segment

    with gensim.utils.open(dump_path, "rb") as fileobj:
        pages = _page_xmls(fileobj)
        if workers == 0:
            for page_xml in pages:
                title, sections = segment(page_xml)
                if _is_article(title, sections, min_article_chars):
                    yield title, sections
            return
        group_size = 64 * workers
        with multiprocessing.get_context("spawn").Pool(workers) as pool:
            while group := [page for _, page in zip(range(group_size), pages)]:
                for title, sections in pool.imap(segment, group, chunksize=16):
                    if _is_article(title, sections, min_article_chars):
                        yield title, sections


def iter_wiki_paragraphs(
    dump_path: str | Path,
    min_chars: int = 200,
    max_chars: int = 2000,
    min_article_chars: int = 200,
    limit_articles: int | None = None,
    workers: int | None = None,
    on_article: Callable[[int], None] | None = None,
) -> Iterator[WikiParagraph]:
    """Clean prose paragraphs of a Wikipedia ``pages-articles`` dump, in dump order.

    ``workers``: >= 1 segments pages in a process pool, the choice for a full dump; 0 runs
    the same gensim steps in this process (faster for small dumps, no helper processes);
    None = 0 for a dump under ``SMALL_DUMP_BYTES``, else cpu_count - 1 workers. ``limit_articles`` stops after that
    many (non-stub) articles and always reads in-process.
    ``on_article(n)`` is called after the n-th article (1-based) has been read, also
    when it gave no paragraph (for progress reports).

    Memory: one article at a time plus the dedup set, one 64-bit key per paragraph
    yielded (~60 bytes each: ~0.6 GB for the ~10 M paragraphs of a full English dump).
    """
    import multiprocessing

    if limit_articles is not None:
        workers = 0
    elif workers is None:
        # A small dump (the packaged sample is 1.7 MB) is read before a pool of spawned processes has started:
        # measured on 2 cores, 2.3-2.9 s in this process against 3.1-4.3 s with the pool.
        small = os.path.getsize(dump_path) < SMALL_DUMP_BYTES
        workers = 0 if small else max(1, multiprocessing.cpu_count() - 1)
    articles = _segment_articles(str(dump_path), min_article_chars, workers)
    # 64 bits of the normalised-text hash: a collision among 10^7 paragraphs has odds ~3e-6,
    # and an int is half the memory of the hex string.
    seen: set[int] = set()
    try:
        for n_article, article in enumerate(articles):
            if limit_articles is not None and n_article >= limit_articles:
                break
            title, sections = article[0], article[1]
            position = 0
            for raw_section, body in sections:
                section = clean_paragraph(raw_section) or raw_section.strip()
                if section.strip().lower() in SKIP_SECTIONS:
                    continue
                if _REFILTER_RE.search(body):
                    body = _filter_again(body)
                for unit in split_units(body):
                    if len(unit) < min_chars:  # cleaning only shortens a unit (by more than it adds)
                        continue
                    text = clean_paragraph(unit)
                    if not (min_chars <= len(text) <= max_chars):
                        continue
                    if not _SENTENCE_END_RE.search(text) or not _mostly_prose(text):
                        continue
                    if _LEFTOVER_MARKUP_RE.search(text):
                        continue  # markup we could not clean: not worth a sample
                    key = int(normalised_hash(text)[:16], 16)
                    if key in seen:
                        continue
                    seen.add(key)
                    yield WikiParagraph(
                        paragraph_id=paragraph_id(title, section, text),
                        title=title,
                        section=section,
                        position=position,
                        text=text,
                        n_chars=len(text),
                    )
                    position += 1
            if on_article is not None:
                on_article(n_article + 1)
    finally:
        articles.close()


def wiki_paragraphs_frame(
    dump_path: str | Path | None = None,
    min_chars: int = 200,
    max_chars: int = 2000,
    min_article_chars: int = 200,
    limit_articles: int | None = None,
    workers: int | None = None,
) -> pd.DataFrame:
    """``iter_wiki_paragraphs`` as a DataFrame (columns ``WIKI_PARAGRAPH_COLUMNS``).

    ``dump_path=None`` reads the sample packaged with gensim.
    """
    path = packaged_wiki_sample() if dump_path is None else dump_path
    rows = [
        vars(p) for p in iter_wiki_paragraphs(path, min_chars, max_chars, min_article_chars, limit_articles, workers)
    ]
    frame = pd.DataFrame(rows, columns=WIKI_PARAGRAPH_COLUMNS)
    return frame.astype({"position": "int64", "n_chars": "int64"})


class Reservoir(Generic[T]):
    """A seeded uniform sample of ``capacity`` items of a stream of unknown length (Algorithm R).

    Holds at most ``capacity`` items; after ``seen`` items each has had the same chance,
    ``capacity / seen``, to be in :attr:`items`; the same stream and ``seed`` give the
    same sample. ``capacity=0`` keeps every item.
    """

    def __init__(self, capacity: int, seed: int) -> None:
        if capacity < 0:
            raise ValueError(f"capacity must be >= 0, got {capacity}")
        self.capacity = capacity
        self.items: list[T] = []
        self.seen = 0
        self._rng = random.Random(seed)

    def add(self, item: T) -> None:
        if not self.capacity or self.seen < self.capacity:
            self.items.append(item)
        else:
            slot = self._rng.randrange(self.seen + 1)  # the (seen+1)-th item stays with chance capacity/(seen+1)
            if slot < self.capacity:
                self.items[slot] = item
        self.seen += 1


@dataclass(frozen=True)
class WikiReadProgress:
    """Where a dump read stands: articles read, paragraphs seen (kept by the filters), kept in the sample."""

    articles: int
    paragraphs_seen: int
    kept: int
    seconds: float

    @property
    def articles_per_s(self) -> float:
        return self.articles / max(self.seconds, 1e-9)

    def message(self) -> str:
        return (
            f"wikipedia: {self.articles} articles read, {self.paragraphs_seen} paragraphs seen, {self.kept} kept "
            f"({self.articles_per_s:.0f} articles/s, {self.seconds:.0f}s)"
        )


def sample_wiki_paragraphs(
    dump_path: str | Path | None = None,
    max_paragraphs: int = 0,
    seed: int = 42,
    min_chars: int = 200,
    max_chars: int = 2000,
    min_article_chars: int = 200,
    limit_articles: int | None = None,
    workers: int | None = None,
    progress: Callable[[WikiReadProgress], None] | None = None,
    progress_every_articles: int = 10_000,
    progress_every_s: float = 30.0,
) -> tuple[pd.DataFrame, WikiReadProgress]:
    """A seeded uniform sample of ``max_paragraphs`` paragraphs of the dump, read as a stream.

    Reservoir sampling (Algorithm R): memory holds at most ``max_paragraphs``
    paragraphs whatever the dump's size, every paragraph of the dump has the same
    chance to be kept, and the same dump, filters and ``seed`` give the same
    sample. ``max_paragraphs=0`` keeps every paragraph (memory grows with the
    dump: ~10 M paragraphs, several GB, for a full English dump).
    ``limit_articles`` stops after that many articles (the sample is then of those).
    ``progress(WikiReadProgress)`` is called every ``progress_every_articles``
    articles or ``progress_every_s`` seconds, whichever comes first, and once at the end.
    Returns the sample (columns ``WIKI_PARAGRAPH_COLUMNS``; a sample is sorted by
    title and position, every paragraph stays in dump order) and the final counts. ``dump_path=None`` reads the sample packaged with gensim.
    """
    path = packaged_wiki_sample() if dump_path is None else dump_path
    reservoir: Reservoir[WikiParagraph] = Reservoir(max_paragraphs, seed)
    articles = 0
    started = last_report = time.monotonic()

    def state() -> WikiReadProgress:
        return WikiReadProgress(articles, reservoir.seen, len(reservoir.items), time.monotonic() - started)

    def on_article(n: int) -> None:
        nonlocal articles, last_report
        articles = n
        if progress is None:
            return
        now = time.monotonic()
        if n % progress_every_articles == 0 or now - last_report >= progress_every_s:
            last_report = now
            progress(state())

    for paragraph in iter_wiki_paragraphs(
        path, min_chars, max_chars, min_article_chars, limit_articles, workers, on_article=on_article
    ):
        reservoir.add(paragraph)
    final = state()
    if progress is not None:
        progress(final)
    kept = reservoir.items
    if reservoir.seen > len(kept):  # a sample: grouped by article; the whole dump stays in dump order
        kept = sorted(kept, key=lambda p: (p.title, p.position))
    frame = pd.DataFrame([vars(p) for p in kept], columns=WIKI_PARAGRAPH_COLUMNS)
    return frame.astype({"position": "int64", "n_chars": "int64"}), final
