"""Quick check (not product code): does masked-inpainting pretraining of the baseline U-Net on
unlabelled cine frames help it at few labels? Pretrain for --minutes, save weights."""

import argparse
import time

import numpy as np
import torch

from data_shards.stream import load_subjects
from foundation.unet import CardiacUNet

p = argparse.ArgumentParser()
p.add_argument("--minutes", type=float, default=20)
p.add_argument("--out", default="runs/unet_pretext/inpaint.pt")
p.add_argument("--mask", type=float, default=0.5)
p.add_argument("--batch", type=int, default=32)
args = p.parse_args()
torch.manual_seed(0)
rng = np.random.default_rng(0)
frames = []
for shards in [
    "runs/real/acdc_cine",
    "runs/real/acdc",
    "runs/real/emidec",
    "runs/real/sunnybrook",
    "runs/real/mnms2",
    "runs/real/npz",
]:
    for s in load_subjects(shards, ["train", "val"]):
        img = s["image"]  # (S, T, H, W) uint8
        frames.append(img.reshape(-1, *img.shape[-2:]))
frames = np.concatenate(frames)
keep = frames.reshape(len(frames), -1).std(1) > 2
frames = torch.from_numpy(frames[keep])
print("frames", frames.shape, flush=True)
# The baseline U-Net with one output channel: MONAI's UNet as CardiacUNet builds it (the same
# weights for the same seed; the wrapper's bottleneck hooks only record, nothing reads them).
net = CardiacUNet(features=1).unet
opt = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=0.01)
P = 16
start, step = time.time(), 0
while time.time() - start < args.minutes * 60:
    idx = torch.from_numpy(rng.integers(0, len(frames), args.batch))
    x = frames[idx].float().unsqueeze(1) / 255.0  # (B,1,H,W)
    if rng.random() < 0.5:
        x = x.flip(-1)
    if rng.random() < 0.5:
        x = x.flip(-2)
    g = torch.from_numpy(rng.uniform(0.7, 1.4, (args.batch, 1, 1, 1))).float()
    x = x.clamp(0, 1) ** g  # gamma, as augmentation
    b, _, h, w = x.shape
    m = (torch.rand(b, 1, h // P, w // P) < args.mask).float()
    m = m.repeat_interleave(P, 2).repeat_interleave(P, 3)
    inp = x * (1 - m) + m * torch.rand_like(x) * 0.0
    out = net(inp)
    err = (out - x) ** 2
    loss = (err * m).sum() / m.sum().clamp(min=1) + 0.1 * (err * (1 - m)).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
    step += 1
    if step % 50 == 0:
        print(f"step {step} loss {loss.item():.4f} {time.time() - start:.0f}s", flush=True)
torch.save(net.state_dict(), args.out)
print("saved", args.out, step, "steps")
