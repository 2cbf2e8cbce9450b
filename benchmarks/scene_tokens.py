"""A transformer's training step on region tokens vs on patch tokens (same model, same width): Table 7's
scene transformer (``row``) and Table 9's clip transformer (``clip_row``).

    python -m benchmarks.scene_tokens [--frames 4] [--regions 40] [--grid 37] [--heads 8] [--runs 3]

Input: one scene of ``frames`` frames; regions: ``regions`` tokens per frame (the paper's ScanNet
frames hold a few dozen); patches: a ``grid`` x ``grid`` patch grid per frame (DINOv2 ViT-L/14 at 518
px: 37 x 37 = 1369). Model: ``models.decoders.TransformerDecoder`` as Table 7's scene transformer
(3 layers, 8 heads) at width 256, all the scene's tokens one group, 20 classes; one AdamW step
(forward, cross-entropy, backward, update) per run, fp32 on CPU.
Reported: tokens per scene, seconds per step, and their ratios. Attention grows with the square of
the tokens, so the time ratio grows with the number of frames; at the paper's 16 frames a patch
scene is 16 x 1369 = 21,904 tokens (an attention matrix of 3.8 GB per head and layer in fp32), which
this machine does not time; the default is 4 frames.
"""
from __future__ import annotations

import argparse
import os

import torch

from benchmarks.measure import median_seconds, peak_extra_memory
from models.decoders import TransformerDecoder

WIDTH, LAYERS, HEADS, CLASSES = 256, 3, 8, 20


def step_workload(tokens: int, seed: int = 0, heads: int = HEADS):
    """A closure running one training step of the transformer on ``tokens`` tokens (one group)."""
    generator = torch.Generator().manual_seed(seed)
    feats = torch.randn(tokens, WIDTH, generator=generator)
    labels = torch.randint(0, CLASSES, (tokens,), generator=generator)
    group = torch.zeros(tokens, dtype=torch.long)
    torch.manual_seed(seed)
    model = TransformerDecoder(WIDTH, CLASSES, layers=LAYERS, heads=heads, dim_feedforward=4 * WIDTH, dropout=0.0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step() -> float:
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(feats, group), labels)
        loss.backward()
        optimizer.step()
        return float(loss.detach())
    return step


def row(runs: int = 3, frames: int = 4, regions: int = 40, grid: int = 37) -> dict:
    """One row for ``benchmarks.run``: region tokens (ours) vs patch tokens (the reference)."""
    region_tokens, patch_tokens = frames * regions, frames * grid * grid
    ours, ours_runs, _ = median_seconds(step_workload(region_tokens), runs)
    reference, reference_runs, _ = median_seconds(step_workload(patch_tokens), runs)
    return {"id": "scene_tokens", "hot_path": "scene transformer train step: regions vs patches",
            "input": f"{frames} frames: {regions} regions or {grid}x{grid} patches each; width {WIDTH}, "
                     f"{LAYERS} layers, {HEADS} heads",
            "ours_s": ours, "ours_runs": ours_runs, "reference_s": reference, "reference_runs": reference_runs,
            "speedup": reference / ours, "region_tokens": region_tokens, "patch_tokens": patch_tokens,
            "check": {"ok": True, "text": f"tokens {region_tokens} vs {patch_tokens} "
                                          f"({patch_tokens / region_tokens:.0f}x); at 16 frames "
                                          f"{16 * regions} vs {16 * grid * grid}"},
            "load_average": os.getloadavg()[0]}


def clip_row(runs: int = 3, frames: int = 8, tokens: int = 400, grid: int = 16, heads: int = 16) -> dict:
    """Table 9's clip transformer (16 heads): ``tokens`` region tokens (the paper's cap, 400) against 8
    frames of ``grid`` x ``grid`` patches, step time and peak extra memory (RSS) of each. The paper's
    37 x 37 grid (10,952 tokens: a 7.7 GB attention matrix per layer in fp32) is not run here."""
    patch_tokens = frames * grid * grid
    ours, ours_runs, _ = median_seconds(step_workload(tokens, heads=heads), runs)
    reference, reference_runs, _ = median_seconds(step_workload(patch_tokens, heads=heads), runs)
    ours_mem, _ = peak_extra_memory(step_workload(tokens, heads=heads))
    reference_mem, method = peak_extra_memory(step_workload(patch_tokens, heads=heads))
    return {"id": "clip_tokens", "hot_path": "clip transformer train step: region tokens vs patches",
            "input": f"{tokens} region tokens vs {frames} frames x {grid}x{grid} patches; width {WIDTH}, "
                     f"{LAYERS} layers, {heads} heads",
            "ours_s": ours, "ours_runs": ours_runs, "reference_s": reference, "reference_runs": reference_runs,
            "speedup": reference / ours, "region_tokens": tokens, "patch_tokens": patch_tokens,
            "ours_mem_bytes": ours_mem, "reference_mem_bytes": reference_mem,
            "check": {"ok": True, "text": f"tokens {tokens} vs {patch_tokens}; peak extra memory "
                                          f"{ours_mem / 2**20:.0f} vs {reference_mem / 2**20:.0f} MB ({method})"},
            "load_average": os.getloadavg()[0]}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.scene_tokens", description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=4)
    parser.add_argument("--regions", type=int, default=40)
    parser.add_argument("--grid", type=int, default=37)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args(argv)
    result = row(args.runs, args.frames, args.regions, args.grid)
    print(f"{result['input']}\n  regions: {result['region_tokens']} tokens, {result['ours_s'] * 1e3:.1f} ms/step\n"
          f"  patches: {result['patch_tokens']} tokens, {result['reference_s'] * 1e3:.1f} ms/step\n"
          f"  patches / regions: {result['patch_tokens'] / result['region_tokens']:.1f}x tokens, "
          f"{result['speedup']:.1f}x step time")
    return result


if __name__ == "__main__":
    main()
