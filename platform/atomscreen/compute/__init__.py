"""Dask side of a campaign: task planning, pure task functions, the cluster, and the single-writer driver."""
