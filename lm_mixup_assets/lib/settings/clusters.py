"""Settings of the clusters stage: grouping each source's low-quality rows and rendering the distiller inputs."""

from __future__ import annotations

from pydantic import Field, model_validator

from .base import Choice, StageSettings


class ClusterAlgorithm(Choice):
    fast = "fast"
    reference = "reference"


class InputStyle(Choice):
    reference = "reference"
    ours = "ours"


class ClusteringSettings(StageSettings):
    """Capacity-constrained clustering of one source's low-quality rows (docs/method.md, 'Clustering')."""

    preset = "clustering"
    min_size: int = Field(2, ge=1, description="Smallest cluster (the method: 2).")
    max_size: int = Field(5, ge=1, description="Largest cluster (the method: 5).")
    mean_cap: float = Field(3.0, gt=0, description="Mean of the normal the cluster capacities are drawn from (3).")
    std_cap: float = Field(1.0, ge=0, description="Standard deviation of the capacity draw (1).")
    seed: int = Field(42, description="Seed of the capacity draw and k-means.")
    algorithm: ClusterAlgorithm = Field(
        ClusterAlgorithm.reference,
        description=(
            "'reference' = the method's code step for step (its capacity rule, scikit-learn MiniBatchKMeans centres, "
            "rows by best similarity each to its most similar centre with room; CPU-bound, minutes to hours per source "
            "at paper scale), 'fast' = our spherical k-means with the same capacities-and-greedy idea, seconds at "
            "100k rows."
        ),
    )
    kmeans_batch_size: int = Field(2048, ge=1, description="MiniBatchKMeans batch_size (algorithm 'reference').")
    kmeans_max_iter: int = Field(30, ge=1, description="MiniBatchKMeans max_iter, in epochs (algorithm 'reference').")

    @model_validator(mode="after")
    def _sizes(self) -> ClusteringSettings:
        if self.min_size > self.max_size:
            raise ValueError(f"need min_size <= max_size (got {self.min_size}, {self.max_size})")
        return self


class ClusterInputsSettings(StageSettings):
    """The distiller's inputs: each cluster's members merged into one prompt."""

    preset = "cluster_inputs"
    max_input_tokens: int = Field(
        2400,
        ge=16,
        description=(
            "A cluster whose merged input is longer than this (policy tokenizer tokens) is split into parts that fit."
        ),
    )
    policy_tokenizer: str = Field(
        "Qwen/Qwen2.5-1.5B-Instruct",
        min_length=1,
        description=(
            "Tokenizer that counts input tokens: the distiller's ('smollm2' packaged, or an HF id / local folder)."
        ),
    )
    input_style: InputStyle = Field(
        InputStyle.reference,
        description=(
            "Merge instruction and member layout: 'reference' = the method's code (its instruction; members as "
            "'Q: ...\\n A: ...', note the space), 'ours' = our instruction, which names the Q:/A: answer layout, and "
            "members as 'Q: ...\\nA: ...'. Members are blank-line separated in both."
        ),
    )
