"""Benchmarks of the pipeline's speed, each a ``cmrfm bench`` command that prints tables and
writes its results as JSON (``runs/bench/<name>.json`` by default):

* ``cmrfm bench loader`` (:mod:`cmrfm.bench.loader`): clips/s of the shard pipeline against a
  plain reader of the same arrays;
* ``cmrfm bench pretrain`` (:mod:`cmrfm.bench.pretrain`): clips/s and MFU of the MAE
  pretraining step, Lightning against a bare PyTorch loop, eager and compiled, DDP and ZeRO-2;
* ``cmrfm bench seg`` (:mod:`cmrfm.bench.seg`): seconds per training step of the ViT
  segmenters against MONAI's 2D U-Net.

What they share (printing the tables and writing the JSON, ratio cells, torch threads, the
machine's load) lives in :mod:`cmrfm.bench.results` and :mod:`cmrfm.bench.machine`.
"""
