"""Tables as data: sweeps into cells, config hashes, ours / paper / Δ in Markdown, CSV and LaTeX,
finished cells not recomputed, and the leaderboard across experiments."""
from __future__ import annotations

import csv
import io
import json

import pytest

from bench.config import ConfigError, cell_config, config_hash, load_config, table_cells
from bench.leaderboard import collect_results, render, write_leaderboard
from bench.config import run_dir
from bench.tables import render_csv, render_latex, render_markdown, write_tables

EXPERIMENT = """
table:
  title: "Toy"
  metrics: [miou, regions_per_image]
  rows:
    a: {model.lr: 0.1}
    b: {model.lr: 0.2}
  columns:
    mini: {}
    voc: {dataset.name: voc}
  reference:
    a/voc: {miou: 0.5}
    b/voc: {miou: 0.8}
"""


def experiment(tmp_path, text=EXPERIMENT, *extra):
    path = tmp_path / "toy.yaml"
    path.write_text(text)
    return load_config([f"experiment={path}", f"paths.results_root={tmp_path / 'results'}", *extra])


def test_sweep_expands_into_crossed_rows_in_order(tmp_path):
    cfg = experiment(tmp_path, EXPERIMENT + "  sweep: {model.lr: [0.01, 0.1], model.decoder: [linear]}\n")
    assert table_cells(cfg)[:3] == ["a,lr=0.01,decoder=linear/mini", "a,lr=0.01,decoder=linear/voc",
                                     "a,lr=0.1,decoder=linear/mini"]
    assert len(table_cells(cfg)) == 2 * 2 * 2
    assert cell_config(cfg, "b,lr=0.01,decoder=linear/voc").model.lr == 0.01  # the sweep point wins over the row
    alone = experiment(tmp_path, "table:\n  sweep: {model.lr: [0.1, 0.2]}\n  columns: {mini: {}}\n")
    assert table_cells(alone) == ["lr=0.1/mini", "lr=0.2/mini"]
    assert cell_config(alone, "lr=0.2/mini").model.lr == 0.2
    with pytest.raises(ConfigError, match="table.sweep.model.lr must be a non-empty list"):
        table_cells(experiment(tmp_path, "table:\n  sweep: {model.lr: 0.1}\n"))


def test_config_hash_ignores_where_and_how_but_not_what(tmp_path):
    cfg = cell_config(experiment(tmp_path), "a/mini")
    base = config_hash(cfg)
    moved = cell_config(experiment(tmp_path, EXPERIMENT, "paths.data_root=/elsewhere/data",
                                   "trainer.enable_progress_bar=false", "data.num_workers=3"), "a/mini")
    assert config_hash(moved) == base  # relocated data, progress bars and workers compute the same thing
    assert config_hash(cell_config(experiment(tmp_path), "b/mini")) != base  # lr differs
    assert config_hash(cell_config(experiment(tmp_path, EXPERIMENT, "seed=1"), "a/mini")) != base
    assert config_hash(cell_config(experiment(tmp_path, EXPERIMENT, "regions.params.slic.compactness=9"),
                                   "a/mini")) != base
    assert config_hash(cell_config(experiment(tmp_path, EXPERIMENT, "trainer.max_epochs=99"), "a/mini"),
                       ignore=("trainer.max_epochs",)) == config_hash(cfg, ignore=("trainer.max_epochs",))


def fake_results(tmp_path, cfg):
    """metrics.json for a/mini, a/voc, b/mini (b/voc missing)."""
    values = {"a/mini": 0.61234, "a/voc": 0.51, "b/mini": 0.7}
    for cell, miou in values.items():
        path = run_dir(cell_config(cfg, cell)) / "metrics.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"miou": miou, "regions_per_image": 42.0, "config_hash": f"h{cell}",
                                    "dataset": cell.split("/")[1], "hardware": "1x CPU", "train_seconds": 3.0,
                                    "eval_seconds": 1.5, "finished_at": "2026-11-25T12:00:00+0000"}))
    return values


def test_markdown_shows_ours_the_paper_and_the_difference(tmp_path):
    cfg = experiment(tmp_path)
    fake_results(tmp_path, cfg)
    markdown = write_tables(cfg, tmp_path / "out")
    lines = markdown.splitlines()
    header = next(line for line in lines if line.startswith("| row"))
    assert header == ("| row | miou mini | regions_per_image mini | miou voc | paper miou voc | Δ "
                      "| regions_per_image voc |")
    assert "| a | 61.23 | 42.0 | 51.00 | 50.00 | +1.00 | 42.0 |" in lines
    assert "| b | 70.00 | 42.0 | — | 80.00 | — | — |" in lines
    assert "python train.py experiment=toy cell=b/voc" in markdown
    assert (tmp_path / "out" / "table.tex").read_text().count(r"\\") == 3  # header + 2 rows
    assert (tmp_path / "out" / "table.csv").is_file()


def test_csv_is_long_form_and_unrounded(tmp_path):
    cfg = experiment(tmp_path)
    fake_results(tmp_path, cfg)
    from bench.tables import collect

    rows = list(csv.DictReader(io.StringIO(render_csv(cfg, collect(cfg)))))
    assert len(rows) == 2 * 2 * 2  # rows x columns x metrics
    a_voc = next(r for r in rows if r["row"] == "a" and r["column"] == "voc" and r["metric"] == "miou")
    assert float(a_voc["ours"]) == 0.51 and float(a_voc["paper"]) == 0.5
    assert float(a_voc["difference"]) == pytest.approx(0.01) and a_voc["config_hash"] == "ha/voc"
    b_voc = next(r for r in rows if r["row"] == "b" and r["column"] == "voc" and r["metric"] == "miou")
    assert b_voc["ours"] == "" and b_voc["difference"] == ""


def test_latex_escapes_names(tmp_path):
    cfg = experiment(tmp_path, EXPERIMENT.replace("    a: {", "    a_1%: {").replace("a/voc", "a_1%/voc"))
    latex = render_latex(cfg, {c: None for c in table_cells(cfg)})
    assert r"a\_1\% &" in latex and r"$\Delta$" in latex and latex.rstrip().endswith(r"\end{tabular}")
    assert "Missing cells" in render_markdown(cfg, {c: None for c in table_cells(cfg)})


def test_leaderboard_lists_every_result_best_first_per_dataset(tmp_path):
    cfg = experiment(tmp_path)
    fake_results(tmp_path, cfg)
    entries = collect_results(tmp_path / "results")
    assert len(entries) == 3 and {e["cell"] for e in entries} == {"a/mini", "a/voc", "b/mini"}
    markdown, table = render(entries, "miou")
    mini = markdown[markdown.index("## mini"):markdown.index("## voc")]
    assert mini.index("| toy | b/mini | 70.00") < mini.index("| toy | a/mini | 61.23")
    assert "| hb/mini | mini | 2026-11-25T12:00:00+0000 | 1x CPU | 4 |" in mini  # hash, data, date, hardware, wall
    rows = list(csv.DictReader(io.StringIO(table)))
    assert [r["cell"] for r in rows] == ["b/mini", "a/mini", "a/voc"]
    written = write_leaderboard(load_config([f"paths.results_root={tmp_path / 'results'}"]))
    assert written == (tmp_path / "results" / "leaderboard.md").read_text()
    with pytest.raises(ValueError, match="leaderboard.sort.*'mIoU'"):  # refused when the config loads
        write_leaderboard(load_config([f"paths.results_root={tmp_path / 'results'}", "leaderboard.sort=mIoU"]))


def test_cell_overrides_apply_to_one_cell_only_and_presets_expand_there(tmp_path):
    cfg = experiment(tmp_path, EXPERIMENT + "  cells:\n    a/voc: {model.preset: voc_mlp}\n")
    mlp = cell_config(cfg, "a/voc")
    assert (mlp.model.decoder, mlp.model.lr, mlp.trainer.max_epochs) == ("mlp", 5e-4, 4)  # the paper's Table 13
    assert cell_config(cfg, "a/mini").model.decoder == "linear" and cell_config(cfg, "a/mini").model.lr == 0.1


def test_every_paper_table_declares_minivoc_and_miniade_beside_the_paper_columns():
    for name in ("table1_region_generation", "table2_pooling", "table3_features", "table4_dinov2_sizes",
                 "table5_region_vs_patch", "table6_decoders"):
        cfg = load_config([f"experiment={name}"])
        assert list(cfg.table.columns)[:2] == ["minivoc", "miniade"], name
        assert {"voc", "ade20k"} <= set(cfg.table.columns) and cfg.table.reference, name
        for cell in table_cells(cfg):
            ccfg = cell_config(cfg, cell)  # every cell builds
            if cell.endswith("/miniade"):
                assert ccfg.dataset.layout == "ade20k" and ccfg.dataset.num_classes == 150
        refs = set(cfg.table.reference)
        assert refs <= set(table_cells(cfg)), f"{name}: reference for unknown cells {refs - set(table_cells(cfg))}"


def test_train_refuses_a_retrieval_experiment():
    from train import train

    with pytest.raises(ValueError, match="nothing to train.*eval.py experiment=table8_retrieval"):
        train(load_config(["experiment=table8_retrieval"]))


def test_missing_cells_of_a_mixed_task_table_name_the_command_of_their_own_task():
    """In the zero-shot table the MaskCLIP+ row trains (task: segmentation): its hint is train.py, the
    others' eval.py; a task= on the command line wins over the rows'."""
    from bench.tables import missing_commands
    from eval import next_steps

    cfg = load_config(["experiment=zeroshot_segmentation"])
    hints = missing_commands(cfg, {"maskclip_plus_vitl14/voc": None, "clip_vitb16_patch/voc": None}, next_steps(cfg))
    assert "python train.py" in hints[0] and "python eval.py" in hints[1]
    forced = load_config(["experiment=zeroshot_segmentation", "task=zeroshot"])
    assert next_steps(forced)("maskclip_plus_vitl14/voc") == "eval.py"
