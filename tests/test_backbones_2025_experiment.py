"""experiments/backbones_2025.yaml: every backbone it runs has a tiny random file (bench.tools.random_weights)
in its family's official layout that loads, through the backbone registry and the cell's own resolved
config (weights=random), into a (d, ceil(H/p), ceil(W/p)) grid; its rows pair patch and region probes
as table 5's do, and reference numbers sit only on patch rows."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from bench.config import EXPERIMENTS_DIR, cell_config, load_config, table_rows
from bench.weights import read_checkpoint

EXPERIMENT = "backbones_2025"
# backbone -> (patch size, width of its tiny random model), written out rather than read from the modules
TINY_GRID = {"dinov2_vitl14_reg": (14, 48), "dinov3_vitl16": (16, 48), "siglip2_vitb16_256": (16, 64),
             "radio_v3_vitl16": (16, 64), "radio_v25_vitl16": (16, 64)}
# keys that only the official file layout of each family has (DINOv2 hub .pth, DINOv3 hub .pth, open_clip's
# whole-model safetensors, NVIDIA's C-RADIO model.safetensors)
OFFICIAL_KEYS = {
    "dinov2_vitl14_reg": {"register_tokens", "pos_embed", "blocks.0.ls1.gamma"},
    "dinov3_vitl16": {"storage_tokens", "rope_embed.periods", "blocks.0.attn.qkv.bias_mask"},
    "siglip2_vitb16_256": {"visual.trunk.pos_embed", "visual.trunk.attn_pool.latent", "logit_bias"},
    "radio_v3_vitl16": {"radio_model.model.patch_generator.pos_embed", "radio_model.input_conditioner.norm_mean"},
    "radio_v25_vitl16": {"radio_model.model.patch_generator.pos_embed", "radio_model.input_conditioner.norm_mean"},
}


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    """A data root holding the random files weights=random names for this experiment's backbones, each
    made by its bench.tools.random_weights entry (a KeyError if WEIGHTS names a file the tool cannot write)."""
    from bench.tools.random_weights import RANDOM_CHECKPOINTS

    root = tmp_path_factory.mktemp("backbones_2025")
    cfg = load_config([f"experiment={EXPERIMENT}", "weights=random", f"paths.data_root={root}"])
    for name in TINY_GRID:
        path = Path(cfg.backbone.params[name].checkpoint)
        RANDOM_CHECKPOINTS[path.name](path)
    return root


def cell(data_root: Path, name: str):
    cfg = load_config([f"experiment={EXPERIMENT}", f"paths.data_root={data_root}"])
    return cell_config(cfg, name)


def backbones() -> list[str]:
    return sorted({row["backbone.name"] for row in table_rows(load_config([f"experiment={EXPERIMENT}"])).values()})


def test_the_experiment_runs_one_backbone_of_each_2025_family():
    assert backbones() == sorted(TINY_GRID)


@pytest.mark.parametrize("name", sorted(TINY_GRID))
def test_random_file_is_official_layout_and_loads_through_the_registry(data_root, name):
    from bench.backbones import build_backbone

    cfg = cell(data_root, f"{name}_region/minivoc")
    assert cfg.backbone.name == name
    params = OmegaConf.to_container(cfg.backbone.params[name], resolve=True)
    path = Path(params["checkpoint"])
    assert path.parent == data_root / "checkpoints" / "random" and path.is_file(), path
    assert path.stat().st_size < 8e6  # tiny: the smoke tests write every file
    state = read_checkpoint(path)
    assert OFFICIAL_KEYS[name] <= set(state), sorted(state)[:8]

    backbone = build_backbone(name, **params)
    patch, dim = TINY_GRID[name]
    assert (backbone.patch_size, backbone.embed_dim) == (patch, dim)
    image = np.random.default_rng(0).integers(0, 256, (45, 70, 3), dtype=np.uint8)
    grid = backbone.features(image)
    assert grid.shape == (dim, -(-45 // patch), -(-70 // patch)) and grid.dtype == torch.float32
    assert torch.isfinite(grid).all()
    assert grid.std(dim=(1, 2)).min() > 0  # positions differ: a real forward pass, not a constant


def test_rows_pair_patch_and_region_probes_like_table5():
    rows = table_rows(load_config([f"experiment={EXPERIMENT}"]))
    for name in TINY_GRID:
        assert rows[f"{name}_region"] == {"backbone.name": name}
        assert rows[f"{name}_patch"] == {"backbone.name": name, "model.kind": "patch", "regions.source": "none",
                                         "extract.patches": True}
    assert len(rows) == 2 * len(TINY_GRID)
    ours, table5 = (OmegaConf.load(EXPERIMENTS_DIR / f"{e}.yaml").table.columns
                    for e in (EXPERIMENT, "table5_region_vs_patch"))
    assert ours == table5  # the same mini settings and real datasets as table 5


def test_references_are_patch_row_fractions_on_real_columns():
    table = OmegaConf.load(EXPERIMENTS_DIR / f"{EXPERIMENT}.yaml").table
    assert table.reference, "no reference numbers"
    for key, value in table.reference.items():
        row, column = key.split("/")
        assert row in table.rows and row.endswith("_patch"), key  # the authors' numbers are patch-level probes
        assert column in ("voc", "ade20k"), key
        assert set(value) == {"miou"} and 0 < value.miou < 1, key  # mIoU as a fraction, as table 5


def test_weights_random_names_a_file_for_every_cell(data_root):
    from bench.tools.random_weights import RANDOM_CHECKPOINTS

    cfg = load_config([f"experiment={EXPERIMENT}", f"paths.data_root={data_root}"])
    for row in table_rows(cfg):
        for column in ("minivoc", "miniade"):
            resolved = cell_config(cfg, f"{row}/{column}")
            path = Path(resolved.backbone.params[resolved.backbone.name].checkpoint)
            assert path.name in RANDOM_CHECKPOINTS and path.is_file(), (row, column, path)
