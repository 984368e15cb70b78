"""Partition definitions shared by the stages.

``[source]`` partitions come from the pool manifest named by
``LM_MIXUP_POOL_MANIFEST`` (default: the profile's, ``demo`` or ``paper``),
read when the code location loads; ``[arm]`` partitions from the selection
profile's recipe names.
"""

from __future__ import annotations

import dagster as dg

from lm_mixup_assets.lib.manifest import load_manifest
from lm_mixup_assets.lib.selection import parse_arm
from resources.profiles import settings

POOL_MANIFEST = load_manifest(settings("pool")["manifest"])

source_partitions = dg.StaticPartitionsDefinition(list(POOL_MANIFEST.sources))

# One partition per training-set recipe (``lib/selection.py`` parses the names);
# ``LM_MIXUP_SELECTION_ARMS`` (comma-separated) replaces the profile's list.
ARMS = [a.strip() for a in settings("selection")["arms"].split(",") if a.strip()]
for _arm in ARMS:
    parse_arm(_arm)  # a bad name fails when the code location loads, naming the arm
arm_partitions = dg.StaticPartitionsDefinition(ARMS)
