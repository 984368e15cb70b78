"""Wikipedia paragraphs for MIXTURE, from the sample packaged with gensim."""

import bz2
import random
import re
import tracemalloc
from collections import Counter

import pytest

from lm_mixup_assets.lib.wiki import (
    WIKI_PARAGRAPH_COLUMNS,
    Reservoir,
    clean_paragraph,
    packaged_wiki_sample,
    paragraph_id,
    sample_wiki_paragraphs,
    split_units,
    wiki_paragraphs_frame,
)

MARKUP = ["[[", "]]", "{{", "}}", "<ref", "==", "''", "{|", "|}", "<!--", "http://", "https://"]


@pytest.fixture(scope="module")
def frame():
    # read through a process pool (what a full dump uses), so tests reading in-process compare the two paths
    return wiki_paragraphs_frame(packaged_wiki_sample(), workers=1)


def test_packaged_sample_found():
    path = packaged_wiki_sample()
    assert path.is_file() and path.name.endswith(".bz2")


def test_packaged_sample_parses(frame):
    assert list(frame.columns) == WIKI_PARAGRAPH_COLUMNS
    assert len(frame) > 1000
    assert frame["title"].nunique() > 80
    assert frame["n_chars"].between(200, 2000).all()
    assert (frame["n_chars"] == frame["text"].str.len()).all()
    for marker in MARKUP:
        assert not frame["text"].str.contains(marker, regex=False).any(), marker
        assert not frame["section"].str.contains(marker, regex=False).any(), marker
    # no list items or sub-headings survive as paragraphs
    assert not frame["text"].str.match(r"\s*[*#:;|!=]").any()
    # references / external links sections are not prose
    assert not frame["section"].str.lower().isin(["references", "external links", "further reading"]).any()


def test_ids_unique_and_stable(frame):
    assert frame["paragraph_id"].is_unique
    # a second run (first articles only, read in-process) gives the same rows for those articles
    again = wiki_paragraphs_frame(packaged_wiki_sample(), limit_articles=5)
    assert 0 < len(again) < len(frame)
    head = frame[frame["title"].isin(set(again["title"]))].reset_index(drop=True)
    assert head[WIKI_PARAGRAPH_COLUMNS].equals(again[WIKI_PARAGRAPH_COLUMNS])
    row = again.iloc[0]
    assert row["paragraph_id"] == paragraph_id(row["title"], row["section"], row["text"])


def test_no_duplicate_texts(frame):
    norm = frame["text"].str.lower().str.replace(r"[\W_]+", " ", regex=True).str.strip()
    assert norm.is_unique


def test_positions_count_up_within_article(frame):
    for _, group in frame.groupby("title", sort=False):
        assert group["position"].tolist() == list(range(len(group)))


def test_clean_paragraph_removes_leftovers():
    raw = (
        "'''Albedo''' () or ''reflection'' {{IPA|x}} is [[Light|light]] reflected<ref>cite</ref> by a "
        "surface , e.g. snow.The value  varies."
    )
    out = clean_paragraph(raw)
    assert out == "Albedo or reflection is light reflected by a surface, e.g. snow. The value varies."


def test_split_units_drops_headings_lists_and_captions():
    body = (
        "Caption of an image|alt=A photo\nA real paragraph of text.\n===Sub===\n* item one\n"
        "# item two\n{| class=x\n| cell\nSecond paragraph."
    )
    assert split_units(body) == ["A real paragraph of text.", "Second paragraph."]
    assert not any(re.search(r"^\W", u) for u in split_units(body))


# --------------------------------------------------------------------------- #
# Streamed, capped reading (sample_wiki_paragraphs)
# --------------------------------------------------------------------------- #
def test_cap_zero_returns_every_paragraph(frame):
    every, read = sample_wiki_paragraphs(packaged_wiki_sample(), max_paragraphs=0, workers=0)
    assert read.paragraphs_seen == read.kept == len(every) == len(frame)
    assert every[WIKI_PARAGRAPH_COLUMNS].equals(frame[WIKI_PARAGRAPH_COLUMNS])  # dump order, same rows
    assert read.articles >= frame["title"].nunique()


def test_reservoir_is_bounded_and_deterministic(frame):
    first, read = sample_wiki_paragraphs(packaged_wiki_sample(), max_paragraphs=25, seed=7, workers=0)
    again, _ = sample_wiki_paragraphs(packaged_wiki_sample(), max_paragraphs=25, seed=7, workers=0)
    assert len(first) == read.kept == 25 and read.paragraphs_seen == len(frame)
    assert first.equals(again)
    assert set(first["paragraph_id"]) <= set(frame["paragraph_id"])
    assert first["title"].nunique() > 10  # spread over the dump, not its first articles
    # grouped by article for the downstream stages
    assert first[["title", "position"]].equals(first.sort_values(["title", "position"])[["title", "position"]])


def test_reservoir_is_uniform_over_the_stream(frame):
    # The dump's paragraphs streamed through the reservoir under many seeds: every article can be
    # picked, every position of the stream is kept about capacity/seen of the time.
    paragraphs = list(frame.itertuples(index=False))
    capacity, seeds = 30, 400
    hits = Counter()
    titles: set[str] = set()
    for seed in range(seeds):
        reservoir = Reservoir(capacity, seed)
        for i, p in enumerate(paragraphs):
            reservoir.add((i, p.title))
        assert len(reservoir.items) == capacity and reservoir.seen == len(paragraphs)
        hits.update(i for i, _ in reservoir.items)
        titles |= {t for _, t in reservoir.items}
    assert titles == set(frame["title"])
    expected = capacity * seeds / 4  # per quarter of the stream
    quarters = [sum(hits[i] for i in range(q * len(paragraphs) // 4, (q + 1) * len(paragraphs) // 4)) for q in range(4)]
    assert all(abs(q - expected) < 0.05 * expected for q in quarters), quarters
    assert Reservoir(capacity, 1).items == [] and Reservoir(0, 1).capacity == 0


def test_progress_is_reported():
    reports = []
    _, read = sample_wiki_paragraphs(
        packaged_wiki_sample(),
        max_paragraphs=10,
        limit_articles=70,
        progress=reports.append,
        progress_every_articles=20,
    )
    assert read.articles == 70
    assert len(reports) >= read.articles // 20 + 1
    assert [r.articles for r in reports[:-1]] == [20 * (i + 1) for i in range(len(reports) - 1)]
    assert reports[-1] == read and "articles read" in read.message()
    assert all(r.kept <= 10 for r in reports)
    assert [r.paragraphs_seen for r in reports] == sorted(r.paragraphs_seen for r in reports)


def test_max_articles_stops_early(frame):
    sample, read = sample_wiki_paragraphs(packaged_wiki_sample(), max_paragraphs=0, limit_articles=5)
    assert read.articles == 5 and 0 < len(sample) < len(frame)


def _write_dump(path, n_articles: int) -> None:
    """A MediaWiki dump of ``n_articles`` short articles, three distinct prose paragraphs each."""
    rng = random.Random(0)
    words = "the of and to in a is that for it as was with be by on not this are or from at which but".split()
    with bz2.open(path, "wt", encoding="utf-8") as f:
        f.write('<mediawiki xmlns="http://www.mediawiki.org/xml/export-0.10/"><siteinfo></siteinfo>\n')
        for a in range(n_articles):
            text = "\n\n".join(
                f"Article {a} paragraph {p} says {' '.join(rng.choice(words) for _ in range(60))}." for p in range(3)
            )
            f.write(
                f"<page><title>Article {a}</title><ns>0</ns><id>{a + 1}</id>"
                f"<revision><id>{a + 1}</id><text>{text}</text></revision></page>\n"
            )
        f.write("</mediawiki>\n")


@pytest.mark.slow  # measures memory over 8,000 pages (7 s)
def test_stream_memory_is_bounded_by_the_cap_not_the_dump(tmp_path):
    dump = tmp_path / "synthetic-pages-articles.xml.bz2"
    _write_dump(dump, 1500)

    def peak_bytes(cap: int) -> tuple[int, int]:
        tracemalloc.start()
        try:
            sample, read = sample_wiki_paragraphs(dump, max_paragraphs=cap, workers=0)
            return tracemalloc.get_traced_memory()[1], len(sample)
        finally:
            tracemalloc.stop()

    sample_wiki_paragraphs(dump, max_paragraphs=5, limit_articles=3)  # imports warm
    (whole, n_whole), (capped, n_capped) = peak_bytes(0), peak_bytes(5)
    assert n_whole == 4500 and n_capped == 5
    # what remains of the capped read is one page at a time and the 64-bit dedup keys
    assert capped < 0.35 * whole, (capped, whole)
