"""`make bench-gpu`: extraction's GPU stages at paper sizes with random-weight models of the real sizes.

    python -m benchmarks.gpu [--out results/bench] [--autocast-on-cpu]

Without a CUDA device it prints why it timed nothing and exits 0. On a GPU (expected about 2-3
minutes on one A100/H100-class card, well under 5; most of it is building the random ViT-H and
writing a 1.2 GB random ViT-L checkpoint) it measures, and prints as one Markdown table and writes
to ``<out>/bench_gpu.json``:

  SAM AMG      seconds per image of segment-anything's automatic mask generator on SAM ViT-H
               (the real classes, random init) at the paper's table10 settings
               (``bench.regions.sam.AMG_PRESETS["table10"]``: 32x32 points, batches of 64, IoU
               0.88, stability 0.95; there is no experiments/table10*.yaml). Random weights pass few
               masks through the filters, so post-processing is lighter than with real weights.
  backbone     images/s of DINOv2 ViT-L/14 (``ViTBackbone``, random weights as
               ``save_random_checkpoint`` makes them), one image per forward (``features``) and
               BATCH per forward (``features_batch``), and whether the batched grids are
               bit-identical to the single ones in float32 and after the float16 rounding the
               feature cache applies (on this project's CPU they are; cuBLAS may pick other
               kernels per batch size, which is what this row finds out).
  pooling      ms per image of ``bench.pooling.pool_regions`` (mean) on CUDA tensors, for the
               synthetic cases of ``benchmarks.inputs`` (SAM-like masks + SLIC fill, 1024-d grid).
  extraction   images/s of ``bench.extract`` in this process on generated MiniVOC (500x375) and
               MiniADE (683x512), SLIC regions on the CPU, the ViT-L on CUDA, caches off; the
               backbone's busy fraction is the extraction summary's ``backbone_busy`` when it has
               one, else the sum of the images' ``backbone_seconds`` over the wall time.
  autocast     max relative difference of pooled region features (SLIC masks, mean pooling) with
               bf16 / fp16 autocast against fp32, on the fixture images of ../shared/fixtures, for
               the random ViT-L/14 and CLIP ViT-B/32. Default extraction stays fp32.

``--autocast-on-cpu`` runs only the autocast row, on the CPU (torch's CPU autocast), with
DINOv2 ViT-S/14 instead of ViT-L (CPU float16 matmuls are ~30x slower than float32); its output
says it is the CPU measurement.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from benchmarks.measure import median_seconds, relative_error

SKIP_MESSAGE = ("bench-gpu: skipped, no CUDA device (torch.cuda.is_available() is False); nothing was timed. "
                "Run `make bench-gpu` on a machine with a GPU.")
SIZES = {"voc": (375, 500), "ade20k": (512, 683)}  # (H, W) of the papers' datasets
MINI = {"voc": "minivoc", "ade20k": "miniade"}
BATCH = 8                     # images per backbone forward in the batched row
SAM_IMAGES = 2                # per size, after one warm-up image
BACKBONE_IMAGES = 16          # per size
EXTRACT_IMAGES = (24, 8)      # (train, val) generated per mini dataset
AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
FIXTURES = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "data"
FIXTURE_IMAGES = ("voc/VOCdevkit/VOC2012/JPEGImages/*.jpg", "ade20k/ADEChallengeData2016/images/validation/*.jpg")


def synchronized(fn: Callable[[], object], device: torch.device) -> Callable[[], object]:
    """``fn`` followed by a CUDA synchronize, so wall time includes the queued kernels."""
    def run():
        result = fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return result
    return run


def paper_images(size: str, count: int, seed: int = 0) -> list[np.ndarray]:
    """``count`` synthetic (H, W, 3) uint8 images of the named paper size (benchmarks.inputs)."""
    from benchmarks.inputs import synthetic_image

    rng = np.random.default_rng(seed)
    return [synthetic_image(rng, *SIZES[size]) for _ in range(count)]


def random_dinov2(name: str, device: torch.device, seed: int = 0):
    """``ViTBackbone`` ``name`` at full size with the random weights ``save_random_checkpoint`` writes."""
    from bench.backbones.vit import VIT_BACKBONES, ViTBackbone, random_vit

    row = VIT_BACKBONES[name]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = random_vit(name, tiny=False)
    return ViTBackbone(model, row.mean, row.std, pos_interp=row.pos_interp, device=str(device), name=name)


def random_clip(device: torch.device, root: Path):
    """CLIP ViT-B/32 at full size with random weights (file in ``root``, then the real loader)."""
    from bench.backbones.clip import load_clip_backbone, save_random_checkpoint

    path = save_random_checkpoint("clip_vitb32", root / "clip_vitb32_random.pt", tiny=False)
    return load_clip_backbone("clip_vitb32", path, device=str(device))


# ----------------------------------------------------------------------------------------------
# Measurements

def sam_amg(device: torch.device) -> dict:
    """{size: seconds_per_image, masks_per_image} of SAM ViT-H's AMG at the table10 settings."""
    from segment_anything import SamAutomaticMaskGenerator

    from bench.regions.sam import build_sam, resolve_amg_kwargs

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = build_sam("vit_h").to(device).eval()
    amg = resolve_amg_kwargs("table10")
    generator = SamAutomaticMaskGenerator(model, output_mode="binary_mask", **amg)
    results = {"model": "SAM ViT-H, random init", "points_per_side": amg["points_per_side"],
               "points_per_batch": amg["points_per_batch"], "sizes": {}}
    for size in SIZES:
        warmup, *images = paper_images(size, 1 + SAM_IMAGES, seed=1)
        with torch.inference_mode():
            generator.generate(warmup)
            start, masks = time.perf_counter(), 0
            for image in images:
                masks += len(synchronized(lambda: generator.generate(image), device)())
        seconds = time.perf_counter() - start
        results["sizes"][size] = {"seconds_per_image": seconds / len(images), "masks_per_image": masks / len(images),
                                  "images": len(images)}
    return results


def batch_agreement(single: Sequence[torch.Tensor], batched: Sequence[torch.Tensor]) -> dict:
    """Whether per-image grids from batched forwards equal the single-image ones: {"identical" (float32
    bits), "identical_fp16" (after the feature cache's float16 rounding), "max_rel_diff"}."""
    return {"identical": all(torch.equal(a, b) for a, b in zip(single, batched)),
            "identical_fp16": all(torch.equal(a.half(), b.half()) for a, b in zip(single, batched)),
            "max_rel_diff": max(relative_error(b, a)[1] for a, b in zip(single, batched))}


def backbone_throughput(backbone, device: torch.device) -> dict:
    """{size: single and batched images/s, batch agreement} of ``backbone`` on generated images."""
    results = {"model": backbone.name, "batch": BATCH, "sizes": {}}
    for size in SIZES:
        images = paper_images(size, BACKBONE_IMAGES, seed=2)
        single_s, _, single = median_seconds(synchronized(lambda: [backbone.features(x) for x in images], device), 3)
        batched_s, _, batched = median_seconds(synchronized(
            lambda: [g for i in range(0, len(images), BATCH) for g in backbone.features_batch(images[i:i + BATCH])],
            device), 3)
        results["sizes"][size] = {"single_images_per_s": len(images) / single_s,
                                  "batched_images_per_s": len(images) / batched_s,
                                  **batch_agreement(single, batched)}
    return results


def gpu_pooling(device: torch.device) -> dict:
    """{size: ms per image, masks} of mean ``pool_regions`` with the grid and masks on ``device``."""
    from bench.pooling import pool_regions
    from benchmarks.inputs import make_case

    results = {"mode": "mean", "sizes": {}}
    for size in SIZES:
        case = make_case(size)
        grid, masks = case.grid.to(device), torch.from_numpy(case.masks).to(device)
        seconds, _, _ = median_seconds(synchronized(lambda: pool_regions(grid, masks, 14), device), 5)
        results["sizes"][size] = {"ms_per_image": 1000 * seconds, "input": case.describe()}
    return results


def extracted_images(manifests: dict) -> tuple[int, float]:
    """(images, sum of their ``backbone_seconds``) over the shard entries of ``{split dir: manifest}``."""
    from bench import shards

    images, seconds = 0, 0.0
    for where, manifest in manifests.items():
        for entry in manifest["shards"]:
            stats = shards.read_entry(Path(where), entry["name"]).stats.values()
            images += len(stats)
            seconds += sum(s.get("backbone_seconds", 0.0) for s in stats)
    return images, seconds


def backbone_busy(manifests: dict, backbone_seconds: float, wall: float) -> tuple[float, str]:
    """(busy fraction, where it came from): the manifests' ``backbone_busy`` (weighted equally) if
    the extraction reports one, else ``backbone_seconds`` / ``wall``."""
    reported = [m.get("backbone_busy", m.get("summary", {}).get("backbone_busy")) for m in manifests.values()]
    if reported and all(r is not None for r in reported):
        return float(np.mean(reported)), "extraction summary"
    return backbone_seconds / wall, "sum of per-image backbone_seconds / wall time"


def end_to_end(size: str, checkpoint: Path, device: torch.device, root: Path,
               backbone: str = "dinov2_vitl14") -> dict:
    """Images/s and backbone busy fraction of ``bench.extract`` on a generated mini dataset of ``size``."""
    from bench.config import load_config
    from bench.extract import extract
    from datamodules.datasets import prepare_dataset

    (height, width), (train, val) = SIZES[size], EXTRACT_IMAGES
    dataset = MINI[size]
    cfg = load_config([f"dataset={dataset}", f"paths.data_root={root}", f"paths.results_root={root}/results",
                       f"dataset.generate.num_train={train}", f"dataset.generate.num_val={val}",
                       f"dataset.generate.width={width}", f"dataset.generate.height={height}",
                       "regions.source=slic", "regions.cache=null", "extract.feature_cache=null",
                       "extract.progress=false", f"backbone.name={backbone}",
                       f"backbone.params.{backbone}.checkpoint={checkpoint}",
                       f"backbone.params.{backbone}.device={device}"])
    prepare_dataset(cfg.dataset)  # generating the images is not part of extraction
    start = time.perf_counter()
    manifests = extract(cfg)
    wall = time.perf_counter() - start
    images, backbone_seconds = extracted_images(manifests)
    busy, source = backbone_busy(manifests, backbone_seconds, wall)
    return {"dataset": dataset, "size": size, "images": images, "seconds": wall, "images_per_s": images / wall,
            "backbone_busy": busy, "busy_source": source}


def fixture_images(root: Path = FIXTURES) -> list[np.ndarray]:
    """The VOC and ADE20K images of the shared fixtures as (H, W, 3) uint8; [] when absent."""
    from PIL import Image

    from bench.images import pil_to_rgb8

    paths = sorted(p for pattern in FIXTURE_IMAGES for p in root.glob(pattern))
    return [pil_to_rgb8(Image.open(p)) for p in paths]


def autocast_pooled_difference(features: Callable[[np.ndarray], torch.Tensor], images: Sequence[np.ndarray],
                               masks: Sequence[np.ndarray], patch_size: int, device_type: str,
                               dtype: torch.dtype) -> float:
    """Max over images of max |pooled_autocast - pooled_fp32| / max |pooled_fp32|: mean-pooled region
    features ((R_i, d) per image, ``masks[i]`` (R_i, H_i, W_i) bool) from ``features`` (image ->
    (d, h, w)) run inside ``torch.autocast(device_type, dtype)`` against it run in float32."""
    from bench.pooling import pool_regions

    worst = 0.0
    for image, mask in zip(images, masks):
        with torch.inference_mode():
            reference = pool_regions(features(image), mask, patch_size)
            with torch.autocast(device_type, dtype=dtype):
                low = features(image)
            pooled = pool_regions(low, mask, patch_size)
        worst = max(worst, relative_error(pooled, reference)[1])
    return worst


def autocast_effect(backbones: dict, device: torch.device) -> dict:
    """{model: {"bf16", "fp16": max relative difference}} on the fixture images with SLIC masks."""
    from bench.regions.slic import SlicRegions

    images = fixture_images()
    if not images:
        return {"skipped": f"no fixture images under {FIXTURES} (see ../shared/fixtures/SOURCES.md)"}
    masks = [SlicRegions(num_components=50).generate(image) for image in images]
    models = {}
    for name, backbone in backbones.items():
        models[name] = {}
        for label, dtype in AUTOCAST_DTYPES.items():
            try:
                models[name][label] = autocast_pooled_difference(backbone.features, images, masks,
                                                                 backbone.patch_size, device.type, dtype)
            except RuntimeError as err:  # e.g. a dtype this device's autocast refuses
                models[name][label] = f"{type(err).__name__}: {err}"
    return {"device": device.type, "images": len(images), "masks": int(sum(len(m) for m in masks)),
            "models": models}


# ----------------------------------------------------------------------------------------------
# The table

def _fmt(value, spec: str) -> str:
    return format(value, spec) if isinstance(value, (int, float)) else str(value)


def size_label(size: str, name: str | None = None) -> str:
    """"voc" -> "voc 500x375" (width x height, as the papers write it); ``name`` replaces "voc"."""
    height, width = SIZES[size]
    return f"{name or size} {width}x{height}"


def table_rows(results: dict) -> list[tuple[str, str, str, str]]:
    """(measurement, input, result, notes) rows of whatever sections ``results`` holds; a section
    that failed is {"error": message} and gives one row saying so."""
    rows = []
    for section in ("sam", "backbone", "pooling", "extraction", "autocast"):
        if "error" in results.get(section, {}):
            rows.append((section, "-", "failed", results[section]["error"]))
    sam = results.get("sam", {})
    for size, r in sam.get("sizes", {}).items():
        rows.append((f"SAM AMG ({sam['model']})", size_label(size),
                     f"{r['seconds_per_image']:.2f} s/image",
                     f"table10 preset: {sam['points_per_side']}x{sam['points_per_side']} points in batches of "
                     f"{sam['points_per_batch']}; {r['masks_per_image']:.1f} masks/image over {r['images']} images"))
    backbone = results.get("backbone", {})
    for size, r in backbone.get("sizes", {}).items():
        where = size_label(size)
        rows.append((f"backbone {backbone['model']}, 1 image/forward", where,
                     f"{r['single_images_per_s']:.1f} images/s", "features()"))
        rows.append((f"backbone {backbone['model']}, {backbone['batch']} images/forward", where,
                     f"{r['batched_images_per_s']:.1f} images/s "
                     f"({r['batched_images_per_s'] / r['single_images_per_s']:.2f}x)",
                     f"features_batch(); same as single: fp32 bits {'yes' if r['identical'] else 'no'}, "
                     f"after fp16 rounding {'yes' if r['identical_fp16'] else 'no'}, "
                     f"max rel diff {r['max_rel_diff']:.1e}"))
    pooling = results.get("pooling", {})
    for size, r in pooling.get("sizes", {}).items():
        rows.append((f"pooling ({pooling['mode']}) on the GPU", r["input"], f"{r['ms_per_image']:.2f} ms/image",
                     "bench.pooling.pool_regions, grid and masks on CUDA"))
    for r in results.get("extraction", {}).get("datasets", []):
        rows.append(("extraction end to end", f"{size_label(r['size'], r['dataset'])}, {r['images']} images",
                     f"{r['images_per_s']:.2f} images/s",
                     f"backbone busy {100 * r['backbone_busy']:.0f}% ({r['busy_source']})"))
    autocast = results.get("autocast", {})
    if "skipped" in autocast:
        rows.append(("autocast vs fp32, pooled features", "-", "skipped", autocast["skipped"]))
    where = "CPU measurement (torch CPU autocast); the GPU one is `make bench-gpu` on a GPU" \
        if autocast.get("device") == "cpu" else "GPU"
    for model, diffs in autocast.get("models", {}).items():
        for label, diff in diffs.items():
            rows.append((f"{label} autocast vs fp32, {model}",
                         f"{autocast['images']} fixture images, {autocast['masks']} SLIC regions",
                         f"max rel diff {_fmt(diff, '.1e')}", where))
    return rows


def render_table(results: dict) -> str:
    """One Markdown table of ``results`` (see ``table_rows``), with a title line naming the device."""
    lines = [f"bench-gpu on {results.get('device', '?')} (torch {results.get('torch', '?')})", "",
             "| measurement | input | result | notes |", "|---|---|---|---|"]
    lines += ["| " + " | ".join(row) + " |" for row in table_rows(results)]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# Entry point

def guarded(fn: Callable[[], dict]) -> dict:
    """``fn()``, or {"error": message}: one failing measurement is reported, not fatal."""
    try:
        return fn()
    except Exception as err:  # noqa: BLE001  (reported in the table)
        return {"error": f"{type(err).__name__}: {err}"}


def vit_sections(device: torch.device, root: Path) -> dict:
    """The backbone, pooling and autocast sections; the random ViT-L lives only during this call."""
    backbone = random_dinov2("dinov2_vitl14", device)
    return {"backbone": guarded(lambda: backbone_throughput(backbone, device)),
            "pooling": guarded(lambda: gpu_pooling(device)),
            "autocast": guarded(lambda: autocast_effect(
                {"dinov2_vitl14": backbone, "clip_vitb32": random_clip(device, root)}, device))}


def run_gpu(device: torch.device) -> dict:
    """Every measurement on the CUDA ``device``."""
    from bench.backbones.vit import save_random_checkpoint

    results = {"device": torch.cuda.get_device_name(device), "torch": torch.__version__}
    results["sam"] = guarded(lambda: sam_amg(device))
    torch.cuda.empty_cache()  # ViT-H's 2.5 GB of weights are garbage now
    with tempfile.TemporaryDirectory(prefix="regionbench-bench-gpu-") as tmp:
        root = Path(tmp)
        results.update(vit_sections(device, root))
        torch.cuda.empty_cache()
        checkpoint = save_random_checkpoint("dinov2_vitl14", root / "dinov2_vitl14_random.pth", tiny=False)
        results["extraction"] = guarded(lambda: {"datasets": [end_to_end(size, checkpoint, device, root / size)
                                                              for size in SIZES]})
    return results


def run_cpu_autocast() -> dict:
    """The autocast row only, on the CPU, with ViT-S/14 and CLIP ViT-B/32 (random weights)."""
    device = torch.device("cpu")
    with tempfile.TemporaryDirectory(prefix="regionbench-bench-gpu-") as tmp:
        backbones = {"dinov2_vits14": random_dinov2("dinov2_vits14", device),
                     "clip_vitb32": random_clip(device, Path(tmp))}
        return {"device": "cpu", "torch": torch.__version__,
                "autocast": guarded(lambda: autocast_effect(backbones, device))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="results/bench", help="directory for bench_gpu.json")
    parser.add_argument("--autocast-on-cpu", action="store_true",
                        help="only the autocast row, measured on the CPU (no GPU needed)")
    args = parser.parse_args(argv)
    if args.autocast_on_cpu:
        results = run_cpu_autocast()
    elif not torch.cuda.is_available():
        print(SKIP_MESSAGE)
        return 0
    else:
        results = run_gpu(torch.device("cuda"))
    print(render_table(results))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = "bench_gpu_cpu_autocast.json" if args.autocast_on_cpu else "bench_gpu.json"
    (out / name).write_text(json.dumps(results, indent=1))
    print(f"written {out / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
