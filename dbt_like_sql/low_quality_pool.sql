-- description: Rated pool rows below the quality threshold: the raw material the distiller merges. Judge failures are in neither split.
-- group: pool
-- partitioned_by: source
-- step: quality_split
-- var: quality_threshold int 4 | Compressed Overall (0-5) at or above which a rated row is high quality; below it, low. One value splits both pools (the quality_split step; LM_MIXUP_QUALITY_SPLIT_QUALITY_THRESHOLD overrides).
select
    source, sample_id, prompt, completion,
    rarity, complexity, informativeness, overall, overall_compressed,
    judge_model, rubric_version,
    {{ var('quality_threshold') }} as quality_threshold
from {{ ref('rated_pool') }}
where status = 'ok'
  and overall_compressed < {{ var('quality_threshold') }}
