"""Partition definitions shared by the stages.

``[source]`` partitions come from the pool manifest named by
``LM_MIXUP_POOL_MANIFEST`` (default: the profile's, ``demo`` or ``paper``),
read when the code location loads.
"""

from __future__ import annotations

import dagster as dg

from lm_mixup_assets.lib.manifest import load_manifest
from resources.profiles import settings

POOL_MANIFEST = load_manifest(settings("pool")["manifest"])

source_partitions = dg.StaticPartitionsDefinition(list(POOL_MANIFEST.sources))
