-- description: Distilled pairs the judge scored at or above the quality threshold (compressed Overall, 0-5): the low-quality rows rescued. Each keeps its cluster's member sample_ids.
-- group: distill
-- partitioned_by: source
-- var: quality_threshold int 4
select
    source, sample_id, cluster_id, part, member_ids, prompt, completion,
    rarity, complexity, informativeness, overall, overall_compressed,
    judge_model, rubric_version, distiller,
    {{ var('quality_threshold') }} as quality_threshold
from {{ ref('rated_distilled') }}
where status = 'ok'
  and overall_compressed >= {{ var('quality_threshold') }}
