"""Settings of the mixture stage: building MIXTURE (Wikipedia paragraphs -> targets -> degraded
variants -> examples) or reading the released one, and the kNN-Bayes rating library."""

from __future__ import annotations

from pydantic import Field, model_validator

from ..mixture_llm import MAX_CLUSTER_VARIANTS
from ..mixture_tasks import TASK_TYPES
from .base import Choice, StageSettings, budget


class TargetWriter(Choice):
    extractive = "extractive"
    llm = "llm"


class MixtureSource(Choice):
    built = "built"
    released = "released"


class CotSource(Choice):
    auto = "auto"
    llm = "llm"
    none = "none"


class ReleasedPart(Choice):
    data_sft = "data_sft"
    data_grpo = "data_grpo"


def _known_tasks(tasks: list[str]) -> list[str]:
    unknown = sorted(set(tasks) - set(TASK_TYPES))
    if unknown:
        raise ValueError(f"unknown task types {unknown}; known: {list(TASK_TYPES)}")
    return tasks


class WikiSettings(StageSettings):
    """The Wikipedia paragraphs MIXTURE's targets are written from."""

    preset = "wiki"
    dump_path: str = Field(
        "enwiki-latest-pages-articles.xml.bz2",
        description=("A Wikipedia XML dump (.xml or .xml.bz2); empty = gensim's packaged enwiki sample (offline)."),
    )
    max_paragraphs: int = Field(
        0,
        ge=0,
        description=(
            "Paragraphs kept: a seeded uniform sample of the whole dump, read as a stream (memory holds at most "
            "this many); 0 = all, the method's choice: a full English dump is ~10 M paragraphs, several GB in "
            "memory and ~5 LLM calls each downstream (see docs/scaling.md)."
        ),
    )
    max_articles: int = Field(
        0,
        ge=0,
        description=(
            "Stop reading after this many articles (0 = the whole dump); the sample is then drawn from the first "
            "articles only. Reads in this process, without gensim's worker pool."
        ),
    )
    min_chars: int = Field(200, ge=1, description="Shortest paragraph kept, in characters.")
    max_chars: int = Field(2000, ge=1, description="Longest paragraph kept, in characters.")
    seed: int = Field(42, description="Seed of the paragraph sample.")


class TargetsSettings(StageSettings):
    """One high-quality target per paragraph and task, rated by the judge."""

    preset = "mixture_targets"
    writer: TargetWriter = Field(
        TargetWriter.llm,
        description=(
            "'llm': the mixture_writer resource writes each target (GPT-4o-mini in the paper); 'extractive': built "
            "from the paragraph's own sentences (offline)."
        ),
    )
    tasks: list[str] = Field(
        list(TASK_TYPES), min_length=1, description="Task types to write: qa, mcq, tfq, cs, paragraph."
    )
    min_quality: int = Field(
        4, ge=0, le=5, description="Compressed Overall (0-5) a target needs to be kept (the method: 4)."
    )
    seed: int = Field(42, description="Seed of the extractive writer's choices.")
    max_failed_fraction: float = budget(
        0.05, "the writer's calls (writer llm), and apart from them of the judge's calls"
    )

    @model_validator(mode="after")
    def _valid(self) -> TargetsSettings:
        _known_tasks(self.tasks)
        return self


class VariantsSettings(StageSettings):
    """Degraded variants of each kept target."""

    preset = "mixture_variants"
    variants_per_target: int = Field(
        20,
        ge=1,
        description=("Noise-operator variants per kept target (paper 20, so a cluster can reach 20 variants)."),
    )
    llm_degradation: bool = Field(True, description="Also ask the mixture writer for degraded rewrites of each target.")
    llm_variants_per_target: int = Field(
        5,
        ge=0,
        description=(
            "Degraded versions the mixture writer is asked for per target, in one call (llm_degradation only)."
        ),
    )
    llm_noisy_copies: int = Field(
        1,
        ge=0,
        description=(
            "Per LLM-degraded variant, copies with surface noise on top (typos, cross-topic sentences): the method's "
            "robustness step after degradation. 0 = none."
        ),
    )
    cross_topic_neighbours: int = Field(
        3, ge=1, description=("Similar targets of other articles offered to the cross-topic merge operator.")
    )
    seed: int = Field(42, description="Seed of the noise operators.")
    max_failed_fraction: float = budget(
        0.05, "the writer's degradation calls (llm_degradation), and apart from them of the judge's calls"
    )


class MixtureSettings(StageSettings):
    """MIXTURE's examples: clusters of variants mapped to their target, split train/test."""

    preset = "mixture"
    source: MixtureSource = Field(
        MixtureSource.built,
        description=(
            "built: clusters of our mixture_variants mapped to their targets; released: the authors' MIXTURE read "
            "from released_path (the upstream mixture tables are then not read and need not exist)."
        ),
    )
    released_path: str = Field(
        "hf:dokiik/MIXTURE",
        description=(
            "source=released: a local folder in the dokiik/MIXTURE layout (data_sft/, data_grpo/) or "
            "hf:dokiik/MIXTURE[@revision] (downloaded once through huggingface_hub; needs network the first time)."
        ),
    )
    released_part: ReleasedPart = Field(
        ReleasedPart.data_sft,
        description=(
            "source=released: data_sft (instruction, input, output, cot; what the reference's SFT reads) or "
            "data_grpo (input, output, task_type; what its GRPO reads)."
        ),
    )
    released_max_rejected_fraction: float = Field(
        0.01,
        ge=0,
        le=1,
        description=(
            "source=released: fail when more than this share of released rows is unusable (empty output or input, "
            "unknown task type); the rejected rows are listed in the metadata either way."
        ),
    )
    tasks: list[str] = Field(list(TASK_TYPES), min_length=1, description="Task types to keep (both sources).")
    min_variants: int = Field(2, ge=2, description="Fewest variants in one example (the method: 2).")
    max_variants: int = Field(
        MAX_CLUSTER_VARIANTS,
        ge=2,
        le=MAX_CLUSTER_VARIANTS,
        description=(
            "Most variants in one example; cluster sizes are uniform over min_variants..min(max_variants, the "
            "target's variants). The method's range is 2-20."
        ),
    )
    cot: CotSource = Field(
        CotSource.auto,
        description=(
            "source=built: auto = the mixture writer writes the reasoning (cot) for examples whose target it wrote "
            "(writer llm), none for extractive targets; llm = for every example; none = never."
        ),
    )
    max_failed_fraction: float = budget(0.05, "the writer's cot calls")
    test_fraction: float = Field(0.1, ge=0, lt=1, description="Share of examples in the test split.")
    seed: int = Field(42, description="Seed of the cluster sizes, the variant draw and the split.")

    @model_validator(mode="after")
    def _valid(self) -> MixtureSettings:
        _known_tasks(self.tasks)
        if self.min_variants > self.max_variants:
            raise ValueError(f"need min_variants <= max_variants (got {self.min_variants}, {self.max_variants})")
        return self


class RatingLibrarySettings(StageSettings):
    """The kNN-Bayes rater's library: MIXTURE targets with their judge scores."""

    preset = "rating_library"
    k_t: int = Field(3, ge=1, description="Neighbours the kNN-Bayes rater votes with (the method: 3).")
    smoothing: float = Field(1e-2, ge=0, description="Additive smoothing of the class-transition matrix T.")
