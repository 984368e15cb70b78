"""From clustered rows to the distiller's inputs: one merged text per cluster (or part of one).

Over-long clusters (docs/method.md, "Distillation"): the reference joins a whole cluster
into one input and lets the tokenizer cut the rendered prompt at ``max_input_tokens``
(2400) from the right, which drops the last members and the assistant header.  We never
truncate: members are split, in order, into parts that fit, and a single member that
alone is over the limit becomes its own part, flagged ``over_max_tokens`` (the distil
step records it as skipped with the reason).
"""

from __future__ import annotations

from collections.abc import Callable

import pandas as pd

from .prompts import check_style, format_member, merge_instruction, merge_members

CLUSTER_INPUT_COLUMNS = [
    "source",
    "cluster_id",
    "part",
    "n_parts",
    "member_ids",
    "n_members",
    "instruction",
    "input_text",
    "input_tokens",
    "over_max_tokens",
]

TokenCounter = Callable[[list[str]], list[int]]


def split_members(token_counts: list[int], max_tokens: int, separator_tokens: int = 2) -> list[list[int]]:
    """Greedy, order-keeping split of a cluster's members into parts whose merged input fits.

    A member that alone exceeds ``max_tokens`` becomes a part of its own (flagged by the
    caller): over-long text is never truncated.
    """
    parts: list[list[int]] = [[]]
    used = 0
    for i, n in enumerate(token_counts):
        extra = n + (separator_tokens if parts[-1] else 0)
        if parts[-1] and used + extra > max_tokens:
            parts.append([])
            used, extra = 0, n
        parts[-1].append(i)
        used += extra
    return [p for p in parts if p]


def build_cluster_inputs(
    members: pd.DataFrame,
    count_tokens: TokenCounter,
    max_tokens: int,
    instruction: str | None = None,
    style: str = "ours",
) -> pd.DataFrame:
    """``members``: source, cluster_id, sample_id, prompt, completion (in member order).

    ``style`` (``lib.prompts``) picks the member layout and, unless ``instruction`` is
    given, the merge instruction."""
    check_style(style)
    instruction = merge_instruction(style) if instruction is None else instruction
    if members.empty:
        return pd.DataFrame(columns=CLUSTER_INPUT_COLUMNS)
    member_tokens = count_tokens([format_member(p, c, style) for p, c in zip(members["prompt"], members["completion"])])
    members = members.assign(_tokens=member_tokens)
    rows = []
    for (source, cluster_id), group in members.groupby(["source", "cluster_id"], sort=True):
        parts = split_members(group["_tokens"].tolist(), max_tokens)
        for part_no, idx in enumerate(parts):
            sub = group.iloc[idx]
            rows.append(
                {
                    "source": source,
                    "cluster_id": int(cluster_id),
                    "part": part_no,
                    "n_parts": len(parts),
                    "member_ids": sub["sample_id"].tolist(),
                    "n_members": len(sub),
                    "instruction": instruction,
                    "input_text": merge_members(list(zip(sub["prompt"], sub["completion"])), style),
                }
            )
    out = pd.DataFrame(rows)
    out["input_tokens"] = count_tokens(out["input_text"].tolist())
    out["over_max_tokens"] = out["input_tokens"] > max_tokens
    return out[CLUSTER_INPUT_COLUMNS]
