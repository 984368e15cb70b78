"""Partition definitions shared by the stages.

Partitions are part of the asset graph, so they are fixed when the code location
loads (the one place settings are read at load): ``[source]`` partitions come from
the pool manifest (``IngestSettings.manifest``: the profile's ``demo`` or ``paper``,
``LM_MIXUP_POOL_MANIFEST`` overrides), ``[arm]`` partitions from the training-set arms
(``TrainingSetSettings.arms``, ``LM_MIXUP_TRAINING_SETS_ARMS`` overrides).
"""

from __future__ import annotations

import dagster as dg

from lm_mixup_assets.config import resolved_settings
from lm_mixup_assets.lib.manifest import load_manifest
from lm_mixup_assets.lib.selection import parse_arm
from lm_mixup_assets.lib.settings.pool import IngestSettings
from lm_mixup_assets.lib.settings.selection import TrainingSetSettings

POOL_MANIFEST = load_manifest(resolved_settings(IngestSettings)[0].manifest)

source_partitions = dg.StaticPartitionsDefinition(list(POOL_MANIFEST.sources))

# One partition per training-set recipe (``lib/selection.py`` parses the names).
ARMS = resolved_settings(TrainingSetSettings)[0].arm_list()
for _arm in ARMS:
    parse_arm(_arm)  # a bad name fails when the code location loads, naming the arm
arm_partitions = dg.StaticPartitionsDefinition(ARMS)
