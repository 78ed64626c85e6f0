"""Quick check (not product code): positional contrastive pretraining (Zeng et al. 2021; the
partition-positives of Chaitanya et al. 2020) of the baseline U-Net's encoder on unlabelled
ACDC-cine/ACDC slices: slices from the same of 4 partitions along the stack are positives."""

import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F

from data_shards.stream import load_subjects
from foundation.unet import CardiacUNet

p = argparse.ArgumentParser()
p.add_argument("--minutes", type=float, default=20)
p.add_argument("--out", default="runs/unet_pretext/positional.pt")
p.add_argument("--batch", type=int, default=48)
p.add_argument("--parts", type=int, default=4)
p.add_argument("--tau", type=float, default=0.1)
args = p.parse_args()
torch.manual_seed(0)
rng = np.random.default_rng(0)
vols = []  # (S, T, H, W) uint8 per subject, S >= 4
for shards in ["runs/real/acdc_cine", "runs/real/acdc", "runs/real/mnms2", "runs/real/sunnybrook"]:
    for s in load_subjects(shards, ["train", "val"]):
        if s["image"].shape[0] >= 4:
            vols.append(torch.from_numpy(s["image"]))
print("volumes", len(vols), flush=True)
# The baseline U-Net with one output channel: MONAI's UNet as CardiacUNet builds it (the same
# weights for the same seed; the wrapper's bottleneck hooks only record, nothing reads them).
net = CardiacUNet(features=1).unet
feats = {}
# As run on 2026-12-03: the last module with 256 output channels, which is the bottom block's
# 1x1 residual projection of its 128-channel input (foundation.unet hooks the block itself).
bottom = [m for m in net.modules() if getattr(m, "out_channels", None) == 256][-1]
bottom.register_forward_hook(lambda m, i, o: feats.__setitem__("z", o))
head = torch.nn.Sequential(torch.nn.Linear(1024, 256), torch.nn.ReLU(), torch.nn.Linear(256, 128))
params = [q for n, q in net.named_parameters()] + list(head.parameters())
opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.01)


def augment(x):  # x (B,1,H,W) float
    b = x.shape[0]
    theta = torch.zeros(b, 2, 3)
    s = torch.from_numpy(rng.uniform(0.8, 1.2, b)).float()
    a = torch.from_numpy(rng.uniform(-0.3, 0.3, b)).float()
    theta[:, 0, 0] = s * torch.cos(a)
    theta[:, 0, 1] = -s * torch.sin(a)
    theta[:, 1, 0] = s * torch.sin(a)
    theta[:, 1, 1] = s * torch.cos(a)
    theta[:, :, 2] = torch.from_numpy(rng.uniform(-0.1, 0.1, (b, 2))).float()
    grid = F.affine_grid(theta, x.shape, align_corners=False)
    x = F.grid_sample(x, grid, align_corners=False)
    g = torch.from_numpy(rng.uniform(0.7, 1.4, (b, 1, 1, 1))).float()
    x = x.clamp(0, 1) ** g
    x = x + 0.03 * torch.randn_like(x) * float(rng.random() < 0.5)
    return x.clamp(0, 1)


start, step = time.time(), 0
while time.time() - start < args.minutes * 60:
    imgs, labels = [], []
    for _ in range(args.batch):
        v = vols[rng.integers(len(vols))]
        k = int(rng.integers(v.shape[0]))
        t = int(rng.integers(v.shape[1]))
        imgs.append(v[k, t])
        labels.append(min(args.parts - 1, k * args.parts // v.shape[0]))
    x = torch.stack(imgs).float().unsqueeze(1) / 255.0
    y = torch.tensor(labels)
    views = torch.cat([augment(x), augment(x)])
    net(views)
    z = F.normalize(
        head(F.adaptive_avg_pool2d(feats["z"], 2).flatten(1)), dim=1
    )  # instance norm zeroes a plain mean
    yy = torch.cat([y, y])
    sim = z @ z.T / args.tau
    eye = torch.eye(len(z), dtype=torch.bool)
    sim = sim.masked_fill(eye, -1e9)
    pos = (yy[:, None] == yy[None]) & ~eye
    logprob = sim - torch.logsumexp(sim, dim=1, keepdim=True)
    loss = -(logprob * pos).sum(1) / pos.sum(1).clamp(min=1)
    loss = loss.mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
    step += 1
    if step % 25 == 0:
        print(f"step {step} loss {loss.item():.4f} {time.time() - start:.0f}s", flush=True)
torch.save(net.state_dict(), args.out)
print("saved", args.out, step, "steps")
