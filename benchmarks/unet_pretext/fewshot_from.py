"""Few-shot runs of the baseline U-Net (method "unet") started from a pretext checkpoint's
weights: a quick check, not product code.

Usage: ``[STEPS=N] python benchmarks/unet_pretext/fewshot_from.py WEIGHTS|none CONFIG [fewshot
args]``. Every tensor whose name and shape match is loaded (all but the class layer); STEPS=N
trains every run for N steps instead of the config's time budget (the networks cost the same
per step, so equal steps are equal time, and a loaded machine changes nothing).
"""

import os
import sys

import torch

import finetune.budget as budget
import finetune.system as system_module
from cmrfm.cli import main

weights = sys.argv[1]
original = system_module.SegFinetuner


def from_weights(**kwargs):
    system = original(**kwargs)
    if kwargs.get("arch") == "unet" and weights != "none":
        state = torch.load(weights)
        own = system.model.net.state_dict()
        ok = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
        print(f"loaded {len(ok)}/{len(own)} tensors from {weights}", flush=True)
        system.model.net.load_state_dict(ok, strict=False)
    return system


system_module.SegFinetuner = from_weights
if os.environ.get("STEPS"):
    budget.steps_for_budget = lambda step, budget_s: (int(os.environ["STEPS"]), 0.0)
main(["fewshot", "--config", *sys.argv[2:]])
