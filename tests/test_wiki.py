"""Wikipedia paragraphs for MIXTURE, from the sample packaged with gensim."""

import re

import pytest

from lm_mixup_assets.lib.wiki import (
    WIKI_PARAGRAPH_COLUMNS,
    clean_paragraph,
    packaged_wiki_sample,
    paragraph_id,
    split_units,
    wiki_paragraphs_frame,
)

MARKUP = ["[[", "]]", "{{", "}}", "<ref", "==", "''", "{|", "|}", "<!--", "http://", "https://"]


@pytest.fixture(scope="module")
def frame():
    return wiki_paragraphs_frame(packaged_wiki_sample())  # gensim's segment_all_articles (process pool)


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
