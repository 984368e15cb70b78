"""Settings of the distill stage: generating a distilled pair per cluster and re-rating it."""

from __future__ import annotations

from pydantic import Field

from .base import StageSettings, budget
from .training import TargetLayout


class DistillSettings(StageSettings):
    """Distilling one source's clusters with the trained distiller."""

    preset = "distill"
    distiller: str = Field(
        "",
        description=(
            "Empty = the grpo_checkpoint asset's model; otherwise a checkpoint folder, an HF id, or (openai generator "
            "backend) the name the served model has."
        ),
    )
    max_clusters: int = Field(
        0, ge=0, description="Clusters distilled per source; 0 = all (the rest are recorded as skipped, never dropped)."
    )
    max_new_tokens: int = Field(2400, ge=1, description="Longest distilled answer in tokens.")
    max_input_tokens: int = Field(
        2400,
        ge=16,
        description=(
            "Inputs (the merged members' text) over this many tokens are skipped with the reason, never truncated; "
            "cluster_inputs already splits over-long clusters into parts that fit. The reference cuts the whole "
            "rendered prompt at 2400 tokens instead."
        ),
    )
    require_answer_tags: bool = Field(
        True,
        description=(
            "Only answers inside <answer>...</answer> parse; false also accepts an untagged response that holds a Q/A "
            "pair at line starts, the first one after any preamble (never counted as well formed)."
        ),
    )
    prompt_layout: TargetLayout = Field(
        TargetLayout.reference,
        description=(
            "The system prompt and instruction/input join the distiller is asked with: 'reference' = the reference's "
            "mix-up system prompt and a newline join (data_process/inference.py); 'chat' = ours. Keep it equal to the "
            "distiller's SFT target_layout: a model answers the prompt it was trained on."
        ),
    )
    repetition_penalty: float = Field(
        1.05,
        gt=0,
        description=(
            "Greedy decoding's repetition penalty (1 = off; the reference distils with 1.05). The openai backend "
            "sends it as an extra request field, which vLLM servers read and api.openai.com rejects."
        ),
    )
    max_failed_fraction: float = budget(0.05, "the distilled clusters whose generation failed (api_error: no answer)")
    max_parse_error_fraction: float = budget(
        0.5,
        "the distiller's answers that do not parse into a pair (parse_error; a quality outcome, not a failed "
        "call, hence its own budget)",
    )


class RescueYieldSettings(StageSettings):
    """Re-rating the distilled pairs: the one acceptance threshold of distilled_high."""

    preset = "rescue_yield"
    quality_threshold: int = Field(
        4,
        ge=0,
        le=5,
        description=(
            "Compressed Overall (0-5) at or above which a distilled pair is accepted into distilled_high. Stored on "
            "each rated_distilled row; distilled_high applies exactly that value."
        ),
    )
    max_failed_fraction: float = budget(
        0.05, "the parsed pairs the judge could not rate (api_error, or parse_error after the re-asks)"
    )
