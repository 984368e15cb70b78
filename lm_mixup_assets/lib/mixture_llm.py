"""LLM prompts for MIXTURE (docs/method.md, MIXTURE): the ``llm`` writer, LLM degradation, the
chain of thought (``cot``) of an example, and how many variants an example gets.

Pure Python: ``render_*`` builds a prompt, ``parse_*`` reads an answer; the generator
call lives in the asset.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from .mixture_tasks import (
    _TAG_RE,
    _TASK_GUIDANCE,
    FORMAT_SPECS,
    TASK_NAMES,
    _as_rng,
    _check_task,
)

__all__ = [
    "LLM_WRITER_TEMPLATE",
    "LLM_DEGRADE_TEMPLATE",
    "VARIANT_SEPARATOR",
    "render_writer_prompt",
    "render_degrade_prompt",
    "parse_degraded_variants",
    "MAX_CLUSTER_VARIANTS",
    "draw_cluster_size",
    "LLM_COT_TEMPLATE",
    "render_cot_prompt",
    "parse_cot",
]


# --------------------------------------------------------------------------- #
# LLM prompt templates (the `llm` writer and LLM degradation)
# --------------------------------------------------------------------------- #
LLM_WRITER_TEMPLATE = """You write training data from encyclopedia text.

Article: {title}
Section: {section}
Paragraph:
\"\"\"
{text}
\"\"\"

Write ONE {task_name} that uses only facts stated in the paragraph. {guidance}
It must make sense without the paragraph at hand (name the subject instead of saying "the text").
Reply with the sample only, in exactly this format:
{format_spec}"""

VARIANT_SEPARATOR = "###"

LLM_DEGRADE_TEMPLATE = """Below is a good {task_name}. Write {n} different low-quality versions of it, as a careless
or poorly informed writer might. Each version must be clearly worse in its own way, for example:
leave out important facts, give an incomplete or vague answer, stop the reasoning half-way, repeat
itself, or state things in a confused order. Do not add new facts and do not fix anything. Keep
the same general layout ({format_hint}) unless the flaw is a missing part.
Write the versions one after another, separated by a line containing only {separator}, and nothing else.

Sample:
\"\"\"
{target}
\"\"\""""


def render_writer_prompt(task: str, paragraph: dict) -> str:
    """User prompt for the ``llm`` writer: one ``task`` sample from ``paragraph``
    (keys ``title``, ``section``, ``text``)."""
    _check_task(task)
    return LLM_WRITER_TEMPLATE.format(
        title=str(paragraph.get("title") or "").strip(),
        section=str(paragraph.get("section") or "").strip() or "Introduction",
        text=str(paragraph.get("text") or "").strip(),
        task_name=TASK_NAMES[task],
        guidance=_TASK_GUIDANCE[task],
        format_spec=FORMAT_SPECS[task],
    )


def render_degrade_prompt(task: str, target: str, n: int = 3) -> str:
    """User prompt asking an LLM for ``n`` degraded versions of ``target`` (less
    information, incomplete reasoning), separated by ``VARIANT_SEPARATOR`` lines."""
    _check_task(task)
    return LLM_DEGRADE_TEMPLATE.format(
        task_name=TASK_NAMES[task],
        n=int(n),
        format_hint=FORMAT_SPECS[task].replace("\n", " / "),
        separator=VARIANT_SEPARATOR,
        target=target.strip(),
    )


def parse_degraded_variants(reply: str, target: str | None = None) -> list[str]:
    """Split an LLM degradation reply into variants (blank ones, exact copies of the
    target and duplicates dropped)."""
    parts = re.split(rf"(?m)^\s*{re.escape(VARIANT_SEPARATOR)}\s*$", reply or "")
    out, seen = [], {target.strip()} if target else set()
    for p in parts:
        p = p.strip().strip('"').strip()
        if p and p not in seen:
            seen.add(p)
            out.append(p)
    return out


# --------------------------------------------------------------------------- #
# Cluster sizes and the chain of thought of an example
# --------------------------------------------------------------------------- #
MAX_CLUSTER_VARIANTS = 20  # the method's upper bound on variants per example (docs/method.md)


def draw_cluster_size(
    rng: np.random.Generator | int | None,
    pool_size: int,
    min_variants: int = 2,
    max_variants: int = MAX_CLUSTER_VARIANTS,
) -> int:
    """How many of a target's ``pool_size`` variants one example uses: uniform over the
    integers ``min_variants .. min(max_variants, pool_size)``.

    The method states the range (2-20) but publishes no distribution; uniform is our
    choice, so every size in the range is equally represented when the pool is large
    enough.  Returns 0 when the pool is smaller than ``min_variants`` (no example).
    """
    if not 2 <= min_variants <= max_variants <= MAX_CLUSTER_VARIANTS:
        raise ValueError(
            f"need 2 <= min_variants <= max_variants <= {MAX_CLUSTER_VARIANTS}, got {min_variants}, {max_variants}"
        )
    if pool_size < min_variants:
        return 0
    return int(_as_rng(rng).integers(min_variants, min(max_variants, pool_size) + 1))


LLM_COT_TEMPLATE = """Below are {n} weak versions of one {task_name}, followed by the single high-quality
{task_name} that an expert wrote from them.

Weak versions:
{variants}

High-quality {task_name}:
\"\"\"
{target}
\"\"\"

Write the expert's reasoning, step by step, as if they had only the weak versions in front of them:
what the versions have in common, which facts each one adds or leaves out, which parts are wrong,
repeated, garbled or about another topic and must go, and how the pieces fit into the required
format ({format_hint}). Do not copy the final sample and do not use facts that appear in none of
the weak versions. Reply with the reasoning only, in plain prose, without tags or headings."""


def render_cot_prompt(task: str, variants: Sequence[str], target: str) -> str:
    """User prompt asking the MIXTURE writer for the reasoning that leads from an
    example's variants to its target (the ``cot`` column)."""
    _check_task(task)
    blocks = "\n\n".join(f"[{i}] {v.strip()}" for i, v in enumerate(variants, 1))
    return LLM_COT_TEMPLATE.format(
        n=len(variants),
        task_name=TASK_NAMES[task],
        variants=blocks,
        target=target.strip(),
        format_hint=FORMAT_SPECS[task].replace("\n", " / "),
    )


_THINK_OPEN_RE = re.compile(r"^\s*<think>\s*", re.IGNORECASE)
_THINK_CLOSE_RE = re.compile(r"\s*</think>.*$", re.IGNORECASE | re.DOTALL)


def parse_cot(reply: str) -> tuple[str, str | None]:
    """(cot, error) from a writer's reply: an optional ``<think>`` wrapper is removed and
    anything from ``</think>`` on is dropped.  An empty reply, or one that still holds
    ``<answer>`` / ``<think>`` tags, is an error (it would break the trained format)."""
    text = _THINK_CLOSE_RE.sub("", _THINK_OPEN_RE.sub("", reply or "")).strip()
    if not text:
        return "", "the writer returned no reasoning"
    if _TAG_RE.search(text):
        return "", "the reasoning contains <think>/<answer> tags"
    return text, None
