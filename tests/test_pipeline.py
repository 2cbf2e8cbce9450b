"""End to end on the tiny MiniVOC: extract -> train -> eval -> table, DDP, unreadable images."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bench.config import cell_config
from bench.extract import extract
from bench.config import run_dir
from tests.conftest import tiny_config, tiny_overrides

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def trained(tiny_root):
    from train import train

    return train(tiny_config(tiny_root))


def test_train_writes_metrics_config_and_checkpoint_per_cell(tiny_root, trained):
    cfg = tiny_config(tiny_root)
    assert set(trained) == {"patch_linear/minivoc", "region_linear/minivoc"}
    for cell, metrics in trained.items():
        directory = run_dir(cell_config(cfg, cell))
        on_disk = json.loads((directory / "metrics.json").read_text())
        assert on_disk["miou"] == metrics["miou"] and 0.0 <= metrics["miou"] <= 1.0
        assert on_disk["num_images"] == 6 and on_disk["epochs"] == 2
        assert np.asarray(on_disk["confusion"]).sum() == on_disk["num_pixels"]
        assert len(on_disk["class_names"]) == 21 and on_disk["class_names"][15] == "person"
        assert (directory / "checkpoints" / "last.ckpt").is_file()
        saved = (directory / "config.yaml").read_text()
        assert f"cell: {cell}" in saved and "${" not in saved  # resolved


def test_eval_reproduces_train_metrics_and_renders_the_table(tiny_root, trained):
    from eval import evaluate

    cfg = tiny_config(tiny_root, "save_predictions=true")
    results = evaluate(cfg)
    for cell in trained:
        assert results[cell]["confusion"] == trained[cell]["confusion"]
    table = (tiny_root / "results" / "quickstart" / "table.md").read_text()
    assert "| patch_linear |" in table and "| region_linear |" in table
    assert f"{100 * trained['region_linear/minivoc']['miou']:.2f}" in table
    csv = (tiny_root / "results" / "quickstart" / "table.csv").read_text().splitlines()
    assert csv[0].startswith("row,") and len(csv) == 3
    pred_dir = run_dir(cell_config(cfg, "region_linear/minivoc")) / "results/VOC2012/Segmentation/comp5_val_cls"
    pngs = sorted(pred_dir.glob("*.png"))
    assert len(pngs) == 6
    png = Image.open(pngs[0])
    assert png.mode == "P" and png.size == (160, 120) and max(np.unique(np.array(png))) <= 20


def test_resume_continues_from_the_last_checkpoint(tiny_root, trained):
    from train import train

    more = train(tiny_config(tiny_root, "cell=region_linear/minivoc", "trainer.max_epochs=3"))
    assert more["region_linear/minivoc"]["epochs"] == 3  # 2 restored + 1 new, not 3 from scratch
    log = run_dir(cell_config(tiny_config(tiny_root), "region_linear/minivoc"))
    assert json.loads((log / "metrics.json").read_text())["epochs"] == 3


def eval_confusion(root: Path, devices: int, tmp: Path) -> dict:
    """``eval.py`` on a copy of the trained cells, in this process (1 device) or as the README's DDP
    command (2): {cell: metrics.json, "printed": its result lines, "stderr": the DDP run's log}."""
    import contextlib
    import io
    import shutil

    from bench.config import load_config
    from eval import evaluate

    results = tmp / f"results_{devices}"
    args = [sys.executable, "eval.py", "experiment=quickstart", *tiny_overrides(root),
            f"paths.results_root={results}", "trainer.accelerator=cpu", f"trainer.devices={devices}",
            "trainer.strategy=" + ("ddp" if devices > 1 else "auto")]
    shutil.copytree(root / "results", results)  # eval.py writes metrics.json beside the checkpoints
    if devices == 1:
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            evaluate(load_config(args[2:]))
        stdout, stderr = printed.getvalue(), ""
    else:
        out = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr[-3000:]
        stdout, stderr = out.stdout, out.stderr
    table = [line for line in stdout.splitlines() if line.startswith(("patch_linear/", "region_linear/"))]
    return {cell: json.loads((results / "quickstart" / cell / "metrics.json").read_text())
            for cell in ("patch_linear/minivoc", "region_linear/minivoc")} | {"printed": table, "stderr": stderr}


def test_two_rank_ddp_eval_equals_one_rank_and_keeps_the_training_record(tiny_root, trained, tmp_path, caplog):
    """The README's DDP command: the same numbers and config hash; the training record (time, epochs,
    hardware) survives the re-scoring, train.py does not re-test, the leaderboard shows the training's
    wall time. Before: another hash, train_seconds dropped, a warning on each rank, a re-test."""
    from bench.leaderboard import collect_results
    from train import train

    cells = ("patch_linear/minivoc", "region_linear/minivoc")
    cfg = tiny_config(tiny_root)
    trained_now = {cell: json.loads((run_dir(cell_config(cfg, cell)) / "metrics.json").read_text()) for cell in cells}
    one = eval_confusion(tiny_root, 1, tmp_path)
    two = eval_confusion(tiny_root, 2, tmp_path)
    for cell in cells:
        assert two[cell]["world_size"] == 2 and one[cell]["world_size"] == 1
        assert two[cell]["confusion"] == one[cell]["confusion"] == trained_now[cell]["confusion"]
        assert two[cell]["num_images"] == one[cell]["num_images"] == 6
        assert two[cell]["training"] == trained_now[cell]["training"] and two[cell]["eval"]["world_size"] == 2
    assert one["printed"] == two["printed"] and len(one["printed"]) == 2
    patch = cells[0]
    assert two[patch]["config_hash"] == trained_now[patch]["config_hash"]  # devices and strategy are not hashed
    # a cell trained further by test_resume_continues_from_the_last_checkpoint (3 epochs), scored with 2,
    # is warned about once (rank 0), the others not at all
    other = [c for c in cells if trained_now[c]["training"]["config_hash"] != two[c]["config_hash"]]
    assert two["stderr"].count("was trained with config") == len(other) and f"{patch}: the" not in two["stderr"]
    caplog.set_level("INFO", logger="regionbench.train")
    again = train(tiny_config(tiny_root, f"paths.results_root={tmp_path / 'results_2'}", f"cell={patch}"))
    assert "not recomputed" in caplog.text and again[patch]["eval"] == two[patch]["eval"]
    for entry in collect_results(tmp_path / "results_2"):
        training = trained_now[entry["cell"]]["training"]
        assert entry["wall_seconds"] == pytest.approx(training["train_seconds"] + training["eval_seconds"])
        assert entry["hardware"] == training["hardware"] and entry["finished_at"] == training["finished_at"]


def test_corrupt_jpeg_is_counted_and_named_without_losing_other_images(tmp_path):
    from train import train

    cfg = tiny_config(tmp_path, "cell=region_linear/minivoc", "trainer.max_epochs=1")
    from datamodules.datasets import prepare_dataset

    prepare_dataset(cfg.dataset)
    bad = Path(cfg.dataset.root) / "VOCdevkit/VOC2012/JPEGImages/mini_000013.jpg"  # a val image
    bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 3])
    extract(cfg)
    metrics = train(cfg)["region_linear/minivoc"]
    assert metrics["num_images"] == 5
    assert [s["id"] for s in metrics["skipped"]["val"]] == ["mini_000013"]
    assert metrics["skipped"]["val"][0]["path"].endswith("mini_000013.jpg")
    assert metrics["skipped"]["train"] == []
    from bench.tables import write_tables

    table = write_tables(tiny_config(tmp_path), tmp_path / "table")
    assert "Unreadable images skipped in extraction (1): mini_000013" in table
    assert "python train.py experiment=quickstart cell=patch_linear/minivoc" in table  # the missing cell


def test_finished_cell_is_not_recomputed_and_a_changed_config_starts_afresh_keeping_the_old_run(tiny_root, tmp_path, caplog):
    from train import train

    caplog.set_level("INFO", logger="regionbench.train")
    own = (f"paths.results_root={tmp_path}", "cell=region_linear/minivoc", "trainer.max_epochs=1")
    cfg = tiny_config(tiny_root, *own)
    first = train(cfg)["region_linear/minivoc"]
    directory = run_dir(cell_config(cfg, "region_linear/minivoc"))
    ckpt = directory / "checkpoints" / "last.ckpt"
    before = ckpt.stat().st_mtime_ns
    again = train(cfg)["region_linear/minivoc"]
    assert again["confusion"] == first["confusion"]
    assert ckpt.stat().st_mtime_ns == before  # nothing was trained
    assert again["config_hash"] == json.loads((directory / "metrics.json").read_text())["config_hash"]
    assert "not recomputed" in caplog.text
    changed = train(tiny_config(tiny_root, *own, "model.lr=0.5"))["region_linear/minivoc"]
    assert changed["config_hash"] != first["config_hash"] and changed["epochs"] == 1  # trained afresh
    kept = directory.with_name(f"{directory.name}@{json.loads((directory / 'run.json').read_text())['resume_hash']}")
    aside = [p for p in directory.parent.iterdir() if p.name.startswith("minivoc@")]
    assert len(aside) == 1 and (aside[0] / "checkpoints" / "last.ckpt").is_file()  # the old run is kept
    assert json.loads((aside[0] / "metrics.json").read_text())["config_hash"] == first["config_hash"]
    assert kept != aside[0]


def test_eval_draws_pictures_with_predictions(tiny_root, trained):
    from eval import evaluate

    evaluate(tiny_config(tiny_root, "cell=region_linear/minivoc", "pictures=2"))
    pictures = sorted((tiny_root / "results/quickstart/region_linear/minivoc/regions").glob("*.png"))
    assert [p.stem for p in pictures] == ["mini_000012", "mini_000013"]  # the first two val images
    width, height = Image.open(pictures[0]).size
    assert width >= 4 * 160  # image | regions | ground truth | prediction


def test_miniade_runs_end_to_end_and_writes_sceneparsing_predictions(tmp_path):
    from eval import evaluate
    from train import train

    ade = ["dataset.name=miniade", "dataset.layout=ade20k", f"dataset.root={tmp_path / 'data/miniade'}",
           "dataset.train_split=training", "dataset.val_split=validation", "dataset.num_classes=150"]
    cfg = tiny_config(tmp_path, *ade, "cell=region_linear/minivoc", "trainer.max_epochs=1")
    extract(cfg)
    metrics = train(cfg)["region_linear/minivoc"]
    assert metrics["dataset"] == "miniade" and metrics["num_images"] == 6
    assert len(metrics["iou_per_class"]) == 150 and metrics["class_names"][90] == "airplane"
    evaluate(tiny_config(tmp_path, *ade, "cell=region_linear/minivoc", "trainer.max_epochs=1",
                         "save_predictions=true"))
    pngs = sorted((tmp_path / "results/quickstart/region_linear/minivoc/predictions").glob("*.png"))
    assert [p.stem for p in pngs][:2] == ["ADE_val_00000001", "ADE_val_00000002"] and len(pngs) == 6
    values = set(np.unique(np.array(Image.open(pngs[0]))).tolist())
    assert Image.open(pngs[0]).mode == "L" and values <= set(range(151)) and values - {0}


def test_eval_of_a_whole_table_leaves_out_untrained_cells_and_names_them(tmp_path, tiny_root, trained):
    from eval import evaluate

    results = evaluate(tiny_config(tiny_root, f"paths.results_root={tmp_path}"))  # nothing trained there
    assert results == {}
    assert "python train.py experiment=quickstart cell=region_linear/minivoc" in (tmp_path / "quickstart/table.md").read_text()
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        evaluate(tiny_config(tiny_root, f"paths.results_root={tmp_path}", "cell=region_linear/minivoc"))
