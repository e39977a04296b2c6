"""Floor 3: building a (symbol, day) without Dagster — the source chosen per band, the Vision
and REST day builders, the coverage fills, the minute view's day and ``PartitionData``.

It imports the domain, storage, sources, features, quality and the lake (floors 0-2),
never ``dagster`` nor ``defs/``; the Dagster assets (``defs/assets/``) call it.
"""
