"""Shard bytes on other CPUs. Intel and AMD machines differ in the code paths their libraries
pick: MKL dispatches on the vendor (and on Intel rounds float32 sums by buffer alignment), torch's
ATen on the instruction set, numpy's ufuncs on the instruction set. A subprocess re-runs the
extraction with those choices forced elsewhere and compares bytes.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bench.config import cell_config
from tests.conftest import tiny_config, tiny_overrides

REPO = Path(__file__).resolve().parents[1]
OTHER_TORCH_PATHS = {
    "ATEN_CPU_CAPABILITY": "default",  # torch's scalar kernels instead of AVX2/AVX-512
    "MKL_CBWR": "COMPATIBLE",          # MKL's SSE2 code path, the one it runs the same on any vendor
    "OMP_NUM_THREADS": "1",            # another thread count
}


def _tar_digests(split_dir: Path) -> dict[str, str]:
    manifest = json.loads((split_dir / "manifest.json").read_text())
    return {s["name"]: s["sha256"] for s in manifest["shards"]}


def test_extraction_writes_the_same_bytes_under_another_cpus_torch_and_mkl_paths(tiny_root, tmp_path):
    """Fails with float32 BLAS pooling (bits follow MKL's code path); passes with exact sums."""
    reference = Path(cell_config(tiny_config(tiny_root), "region_linear/minivoc").extract.shard_dir)
    target = tmp_path / "other_cpu"
    args = [sys.executable, "-m", "bench.extract", "experiment=quickstart", "cell=region_linear/minivoc",
            *tiny_overrides(tiny_root), f"extract.shard_dir={target}", "extract.feature_cache=null"]
    subprocess.run(args, cwd=REPO, check=True, env={**os.environ, **OTHER_TORCH_PATHS},
                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    for split in ("train", "val"):
        assert _tar_digests(target / split) == _tar_digests(reference / split)


GRIDS = """
import sys, numpy as np
from bench.backbones import ColorTextureBackbone
rng = np.random.default_rng(0)
images = [rng.integers(0, 256, (90, 120, 3), dtype=np.uint8) for _ in range(4)]
images = [np.repeat(np.repeat(image[::6, ::6], 6, 0), 6, 1)[:90, :120] for image in images]  # edges and flats
np.save(sys.argv[1], np.stack([ColorTextureBackbone().features(image).numpy() for image in images]))
"""


def _numpy_has(feature: str) -> bool:
    from numpy._core._multiarray_umath import __cpu_features__
    return bool(__cpu_features__.get(feature))


def test_colour_texture_grids_without_avx512_agree_within_two_float16_ulps(tmp_path):
    """The stated limit of the claim: numpy's AVX-512 and AVX2 transcendental functions differ in
    the last float32 bits, so an AVX2-only CPU gives a colour-texture grid whose float16 values
    differ from an AVX-512 CPU's in under 2% of values, by at most 2 units in the last place."""
    if not _numpy_has("AVX512_SKX"):
        pytest.skip("this CPU has no AVX-512: numpy already runs its AVX2 paths here")
    grids = {}
    for name, env in (("avx512", {}), ("avx2", {"NPY_DISABLE_CPU_FEATURES": "X86_V4"})):
        subprocess.run([sys.executable, "-c", GRIDS, str(tmp_path / f"{name}.npy")], cwd=REPO, check=True,
                       env={**os.environ, **env})
        grids[name] = np.load(tmp_path / f"{name}.npy").astype(np.float16)
    a, b = grids["avx512"], grids["avx2"]
    differ = a != b
    assert differ.mean() < 0.02
    spacing = np.spacing(np.maximum(np.abs(a), np.abs(b)))
    assert (np.abs(a.astype(np.float32) - b.astype(np.float32)) <= 2 * spacing.astype(np.float32)).all()


def test_colour_texture_std_channels_are_correctly_rounded_square_roots():
    """The Lab standard deviations (channels 3:6) are IEEE sqrt of the float32 patch variances: torch's
    sqrt of a large tensor goes through MKL's vector math on Intel CPUs, whose last bit differs from the
    correctly rounded one in about 0.7% of values there (17% under MKL_CBWR=COMPATIBLE), so an Intel and
    an AMD machine wrote different shards of the same images."""
    import torch
    import torch.nn.functional as F
    from skimage.color import rgb2lab

    from bench.backbones import ColorTextureBackbone, center_pad

    image = np.random.default_rng(0).integers(0, 256, (300, 420, 3), dtype=np.uint8)
    backbone = ColorTextureBackbone()
    p = backbone.patch_size
    lab = center_pad(rgb2lab(image.astype(np.float32) / 255).astype(np.float32), p)
    channels = torch.from_numpy(lab).permute(2, 0, 1)
    mean = F.avg_pool2d(channels, p)
    centred = channels - mean.repeat_interleave(p, 1).repeat_interleave(p, 2)
    variance = F.avg_pool2d(centred * centred, p).numpy().astype(np.float64)
    exact = np.sqrt(variance).astype(np.float32) / np.float32(25.0)  # float64 sqrt rounded once: correctly rounded
    grid = backbone.features(image).numpy()
    assert np.array_equal(grid[3:6], exact)
