"""Every experiment YAML runs end to end at tiny size: extraction -> train -> eval through the real
entry points, on its mini column (every row, so every row kind), so a broken experiment fails CI.

The random-weight checkpoints the YAMLs name (``${paths.data_root}/checkpoints/random``,
``python -m bench.tools.random_weights``) are written once and linked into each experiment's data root.
Table 1 and regions_smoke share one data root, so the second reads every SAM mask from the cache
the first filled; the others have their own (shards or features reused from another experiment
report no backbone_seconds_per_image). SAM-family sources run at random weights with one point per
side on one 96x72 image per split: their masks say nothing, the run checks the wiring.
"""
from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest

from bench.config import EXPERIMENTS_DIR, cell_configs, load_config, table_rows
from bench.tasks import get_task

# experiment -> its column that runs anywhere (the rest need downloaded datasets and weights)
MINI_COLUMN = {"table8_retrieval": "minicoco", "table7_multiview": "miniscannet", "table9_activity": "minikinetics"}
# what an experiment needs beyond SMOKE: a database of more than one image
EXTRA = {"table8_retrieval": ["dataset.max_images=null", "retrieval.no_positives=skip"]}
# how each built-in dataset is made tiny
TINY_DATA = {
    "default": ["dataset.generate.num_train=8", "dataset.generate.num_val=4", "dataset.generate.width=96",
                "dataset.generate.height=72"],
    # 2 + 2 scenes of 3 frames; every frame (a scene transformer needs several)
    "table7_multiview": ["dataset.generate.num_train_scenes=2", "dataset.generate.num_val_scenes=2",
                         "dataset.generate.frames_per_scene=3", "dataset.generate.width=96",
                         "dataset.generate.height=72", "dataset.generate.depth_width=48",
                         "dataset.generate.depth_height=36", "dataset.max_images=null"],
    # one clip per class and split, 16 frames of 64x48; two clips per split
    "table9_activity": ["dataset.generate.num_train=1", "dataset.generate.num_val=1", "dataset.generate.frames=16",
                        "dataset.generate.width=64", "dataset.generate.height=48", "dataset.max_images=2"],
}
SHARED_MASKS = ("regions_smoke", "table1_region_generation")  # one data root: SAM masks computed once
SAM_FAMILY = ("sam", "hq_sam", "mobile_sam", "sam2")
SMOKE = [
    "extract.samples_per_shard=4", "extract.progress=false",
    "trainer.max_epochs=1", "trainer.enable_progress_bar=false", "logger.kind=none",
    "retrieval.queries_per_class=2",
    # SAM-family sources cost seconds per image at random weights on 2 cores: one point per side,
    # one image per split, and table1 / regions_smoke's settings made equal so that the second
    # reads every mask from the cache the first filled
    "dataset.max_images=1", *(f"regions.params.{s}.points_per_side=1" for s in SAM_FAMILY),
    "regions.params.sam2.box_nms_thresh=1.0",
]


@pytest.fixture(scope="module")
def smoke_root(tmp_path_factory) -> Path:
    """Holds the random-weight checkpoints every experiment's mini column names, and the mask cache."""
    from bench.tools.random_weights import write_random_checkpoints

    root = tmp_path_factory.mktemp("smoke")
    write_random_checkpoints(root / "checkpoints")
    return root


def smoke_config(root: Path, name: str):
    data = root / ("sam" if name in SHARED_MASKS else name) / "data"
    if not (data / "checkpoints" / "random").exists():
        (data / "checkpoints").mkdir(parents=True)
        (data / "checkpoints" / "random").symlink_to(root / "checkpoints", target_is_directory=True)
    column = MINI_COLUMN.get(name, "minivoc")
    return load_config([f"experiment={name}", f"cell=*/{column}", f"paths.data_root={data}",
                        f"paths.results_root={root / 'results'}", *SMOKE,
                        *TINY_DATA.get(name, TINY_DATA["default"]), *EXTRA.get(name, [])])


def table_values(path: Path) -> dict[tuple[str, str, str], str]:
    """table.csv as {(row, column, metric): our value as written}."""
    with path.open() as f:
        return {(r["row"], r["column"], r["metric"]): r["ours"] for r in csv.DictReader(f)}


@pytest.mark.parametrize("name", sorted(p.stem for p in EXPERIMENTS_DIR.glob("*.yaml")))
def test_experiment_runs_end_to_end_on_its_mini_column(name, smoke_root):
    from bench.extract import extract
    from eval import evaluate
    from train import train

    cfg = smoke_config(smoke_root, name)
    column = MINI_COLUMN.get(name, "minivoc")
    cells = [f"{row}/{column}" for row in table_rows(cfg)]
    extract(cfg)
    trains = sorted(c for c, ccfg in cell_configs(cfg).items() if get_task(ccfg.task).trains)  # tables may mix tasks
    if trains:
        trained = train(smoke_config(smoke_root, name))
        assert sorted(trained) == trains
    results = evaluate(smoke_config(smoke_root, name))
    assert sorted(results) == sorted(cells)
    values = table_values(smoke_root / "results" / name / "table.csv")
    for cell in cells:
        row, col = cell.split("/")
        for metric in cfg.table.metrics:
            assert metric in results[cell], f"{cell}: no {metric} in its metrics"
            shown = values[(row, col, metric)]
            assert shown != "" and not math.isnan(float(shown)), f"{cell}: {metric} missing from the table"
    table = (smoke_root / "results" / name / "table.md").read_text()
    assert not any(f"cell={c}`" in table for c in cells), table  # no cell of the mini column listed as missing
