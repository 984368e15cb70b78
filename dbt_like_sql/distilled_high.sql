-- description: Distilled pairs the judge scored at or above the acceptance threshold (compressed Overall, 0-5): the low-quality rows rescued. The threshold is the one rated_distilled applied to its rescue yield (its quality_threshold column), so the table and the yield always agree. Each keeps its cluster's member sample_ids.
-- group: distill
-- partitioned_by: source
select
    source, sample_id, cluster_id, part, member_ids, prompt, completion,
    rarity, complexity, informativeness, overall, overall_compressed,
    judge_model, rubric_version, distiller,
    quality_threshold
from {{ ref('rated_distilled') }}
where status = 'ok'
  and overall_compressed >= quality_threshold
