"""Settings of the selection stage: long-tail scores and the training set of each arm."""

from __future__ import annotations

from pydantic import Field

from .base import Choice, StageSettings, internal

PAPER_ARMS = (
    "mixup50_ori50,mixup70_ori30,mixup30_ori70,high70_low30,high50_low50,high30_low70,original_high,random,full_low"
)


class OriginalRank(Choice):
    long_tail = "long_tail"
    quality_then_long_tail = "quality_then_long_tail"


class RowOrder(Choice):
    by_part = "by_part"
    reference = "reference"


class LongTailSettings(StageSettings):
    """The long-tail (rarity) score of every candidate row."""

    preset = "long_tail"
    k: int = Field(15, ge=1, description="Neighbours in the kNN long-tail score (the method: 15).")
    prompt_prefix: str = Field(
        "Instruction: ",
        description=(
            "Put before the prompt in the text embedded for the long-tail score, "
            "'{prompt_prefix}{prompt}\\n{answer_prefix}{completion}' (stripped); the method's code uses 'Instruction: '."
        ),
    )
    answer_prefix: str = Field(
        "Answer: ", description=("Put before the completion in the long-tail text; the method's code uses 'Answer: '.")
    )


class TrainingSetSettings(StageSettings):
    """One arm's training set."""

    preset = "training_sets"
    arms: str = internal(
        PAPER_ARMS,
        (
            "Comma-separated arms, each a partition of training_sets and the evaluation assets: mixupA_oriB, "
            "highA_lowB, original_high, random, full_low. It fixes the partitions, so it is read when the code "
            "location loads and is not a launchpad field: set it by profile or LM_MIXUP_TRAINING_SETS_ARMS."
        ),
        min_length=1,
    )
    size: int = Field(10_000, ge=1, description="Rows per arm (paper 10,000: about 3% of a 300k pool).")
    seed: int = Field(0, description="Seed of the uniform draws (random, full_low, the low part of highA_lowB).")
    original_rank: OriginalRank = Field(
        OriginalRank.quality_then_long_tail,
        description=(
            "How original high rows are ranked: 'long_tail' (rarest first) or 'quality_then_long_tail' (judge score "
            "first, rarest first within a score: the order the method's long-tail script writes). Distilled rows "
            "always go by long-tail score."
        ),
    )
    row_order: RowOrder = Field(
        RowOrder.reference,
        description=(
            "Order of an arm's rows (position, JSONL): 'by_part' = each part in rank order, recipe order; 'reference' "
            "= original part then distilled part, shuffled as the method's merge script does (seeded shuffle_seed)."
        ),
    )
    shuffle_seed: int = Field(42, description="Seed of the row_order 'reference' shuffle (the merge script's --seed).")
    drop_duplicate_content: bool = Field(
        True,
        description=(
            "Skip a row whose (normalised) prompt and completion are already in the arm and take the next one; the "
            "method's merge keeps duplicates."
        ),
    )

    def arm_list(self) -> list[str]:
        return [a.strip() for a in self.arms.split(",") if a.strip()]


class HeldoutSettings(StageSettings):
    """The held-out instruction set: high-quality pool rows no training set may contain, scored by the evaluation."""

    preset = "heldout"
    size: int = Field(
        0,
        ge=0,
        description=(
            "High-quality pool rows reserved as held-out answers (a seeded uniform draw); 0 = none. The method has no "
            "held-out set (it evaluates on public benchmarks only), so the paper profile reserves none and its "
            "training sets are the method's; set e.g. 1000 to add the held-out log-likelihood task."
        ),
    )
    seed: int = Field(0, description="Seed of the draw (numpy default_rng).")
    max_source_fraction: float = Field(
        0.3,
        gt=0,
        le=1,
        description=(
            "At most this share of each source's high-quality rows is held out, so no source loses its high rows to "
            "the evaluation."
        ),
    )
    max_chars: int = Field(
        0,
        ge=0,
        description=(
            "Only rows whose prompt + completion have at most this many characters are drawn (scoring cost grows "
            "with length); 0 = any length."
        ),
    )
