"""From a distiller's response to a new (prompt, completion) pair (docs/method.md, "Distillation").

The distiller answers ``<think>…</think><answer>Q: …\\nA: …</answer>``. As the
reference's inference does, everything after the first ``</answer>`` is cut before
parsing (a model that never learnt to stop keeps writing).  A response that yields
no pair is kept with ``status = "parse_error"`` and the reason, never dropped; a
generation that failed keeps the generator's status.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .ingest import make_sample_id, normalise_text
from .rewards import extract_answer, parse_response

# "Q:" and "A:" at line starts (markdown bold and "Question:"/"Answer:" tolerated: small models write them).
_Q = r"(?:\*\*)?(?:Q|Question)(?:\*\*)?\s*:(?:\*\*)?"
_A = r"(?:\*\*)?(?:A|Answer)(?:\*\*)?\s*:(?:\*\*)?"
_PAIR_RE = re.compile(rf"^\s*{_Q}[ \t]*(?P<q>.*?)\s*^\s*{_A}[ \t]*(?P<a>.*)$", re.DOTALL | re.MULTILINE | re.IGNORECASE)
_NEXT_Q_RE = re.compile(rf"^\s*{_Q}", re.MULTILINE | re.IGNORECASE)


@dataclass(frozen=True)
class ParsedPair:
    status: str  # "ok" | "parse_error"
    prompt: str | None = None
    completion: str | None = None
    reason: str | None = None
    well_formed: bool = False  # the whole response was exactly <think>…</think><answer>…</answer>


_THINK_RE = re.compile(r"<think>.*?(?:</think>|$)", re.DOTALL)
_ANSWER_END_RE = re.compile(r"</answer>", re.IGNORECASE)
_TAG_ANY_CASE_RE = re.compile(r"</?(?:think|answer)>", re.IGNORECASE)


def cut_after_answer(response: str) -> str:
    """The response up to and including its first ``</answer>`` (case-insensitive), or all of it."""
    m = _ANSWER_END_RE.search(response)
    return response[: m.end()] if m else response


def parse_distilled(response: str | None, require_tags: bool = True) -> ParsedPair:
    """The merged pair in a distiller response, or a ``parse_error`` saying why not.

    ``require_tags=False`` also accepts a response with no ``<answer>`` block whose text (outside any
    ``<think>``) holds a Q/A pair at line starts — the first one, after any preamble ("Here is the
    merged pair: …"): small, briefly trained distillers often drop the tags and talk first.
    Such pairs are never ``well_formed``.
    """
    if response is None or not response.strip():
        return ParsedPair("parse_error", reason="empty response")
    # tags in any case, as the reference's inference matches them
    response = _TAG_ANY_CASE_RE.sub(lambda m: m.group(0).lower(), cut_after_answer(response))
    answer = extract_answer(response, "strict")  # a merged pair needs a complete <answer> block
    if answer is None:
        why = "no <answer> block" if "<answer>" not in response else "unterminated or empty <answer> block"
        if require_tags or "<answer>" in response:
            return ParsedPair("parse_error", reason=why)
        answer = _THINK_RE.sub("", response).strip()
        first_q = _NEXT_Q_RE.search(answer)
        if first_q is None:
            return ParsedPair("parse_error", reason=f"{why}, and the text does not start with 'Q:' nor has a 'Q:' line")
        answer = answer[first_q.start() :]
    m = _PAIR_RE.search(answer)
    if m is None:
        return ParsedPair("parse_error", reason="answer is not 'Q: <question>' then 'A: <answer>'")
    question, reply = m.group("q").strip(), m.group("a").strip()
    # A second "Q:" means several pairs were written: keep the first, as the instruction asks for one.
    nxt = _NEXT_Q_RE.search(reply)
    if nxt:
        reply = reply[: nxt.start()].strip()
    if not question:
        return ParsedPair("parse_error", reason="empty question")
    if not reply:
        return ParsedPair("parse_error", reason="empty answer")
    return ParsedPair(
        "ok", normalise_text(question), normalise_text(reply), well_formed=parse_response(response) is not None
    )


def distilled_sample_id(source: str, prompt: str, completion: str) -> str:
    """Same hash as a pool row's, marked so a distilled pair never collides with an original one."""
    return make_sample_id(f"{source}#distilled", prompt, completion)
