"""Sources, preprocessing, shard writing and streaming; the synthetic phantom."""
