"""Names a hub folder and a checkpoint agree on, in a module without torch, so that reading a
config.json or writing a card (predict's first steps) imports nothing heavy."""

from __future__ import annotations

from cmrfm_io.modalities import MODALITIES as MODALITIES  # re-exported: modality_embed rows

# A hub folder (huggingface_hub.constants.SAFETENSORS_SINGLE_FILE and CONFIG_NAME).
WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
FORMAT = "cmrfm-backbone"
FORMAT_VERSION = 1
SHA256_KEY = "weights_sha256"  # config.json: sha256 of model.safetensors, verified at load

# Rows of CardiacViT.modality_embed and axis_embed: append only, checkpoints index them.
# MODALITIES (imported above) lives in cmrfm_io, so that data_shards checks the same names.
AXES = ("time", "depth")  # the clip's third axis: frames over time, or slices in depth
