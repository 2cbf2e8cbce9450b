"""Results tables: collect each cell's metrics.json and render Markdown and CSV."""
from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from bench.config import cell_config, table_cells


def collect(cfg: DictConfig, run_dir) -> dict[str, dict | None]:
    """cell -> its metrics.json content, or None when the cell has not been run."""
    out = {}
    for cell in table_cells(cfg):
        path = run_dir(cell_config(cfg, cell)) / "metrics.json"
        out[cell] = json.loads(path.read_text()) if path.is_file() else None
    return out


def _percent(v: float) -> str:
    return f"{100 * v:.2f}"


# How each metric is shown; the paper's reference numbers are given in the same units as ours.
METRIC_FORMATS = {
    "miou": _percent, "oracle_miou": _percent, "pixel_acc": _percent, "mean_class_acc": _percent,
    "coverage": _percent, "seconds_per_image": "{:.3f}".format, "regions_per_image": "{:.1f}".format,
    "backbone_seconds_per_image": "{:.4f}".format, "feature_cache_hit_rate": _percent,
}


def _fmt(metric: str, value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return METRIC_FORMATS.get(metric, str)(value)


def _reference(reference: dict, cell: str, metric: str):
    ref = reference.get(cell)
    return ref.get(metric) if isinstance(ref, dict) else None


def table_rows(cfg: DictConfig, results: dict[str, dict | None]) -> tuple[list[str], list[list[str]]]:
    """Header and rows: one row per table row; per column and metric, ours [the paper's]."""
    metrics = list(cfg.table.metrics)
    columns = list(cfg.table.columns) or ["default"]
    reference = OmegaConf.to_container(cfg.table.reference) if cfg.table.reference else {}
    header = ["row"] + [f"{m}{'' if col == 'default' else ' ' + col}" for col in columns for m in metrics]
    rows = []
    for row in cfg.table.rows:
        line = [row]
        for col in columns:
            cell = f"{row}/{col}"
            ours = results.get(cell)
            for m in metrics:
                text = _fmt(m, ours.get(m)) if ours else "—"
                ref = _reference(reference, cell, m)
                line.append(text if ref is None else f"{text} [{_fmt(m, ref)}]")
        rows.append(line)
    return header, rows


def render_markdown(cfg: DictConfig, results: dict[str, dict | None], run_dir) -> str:
    header, rows = table_rows(cfg, results)
    lines = [f"### {cfg.table.title or cfg.experiment}", "",
             *(["Each cell: ours [the paper's number].", ""] if cfg.table.reference else []),
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    missing = [c for c, m in results.items() if m is None]
    skipped = sorted({(s["id"], s["path"]) for m in results.values() if m
                      for split in m.get("skipped", {}).values() for s in split})
    if missing:
        lines += ["", "Missing cells:"] + [
            f"- {c}: run `python -m bench.extract experiment={cfg.experiment} cell={c} && "
            f"python train.py experiment={cfg.experiment} cell={c}`" for c in missing]
    if skipped:
        lines += ["", f"Unreadable images skipped in extraction ({len(skipped)}): "
                  + ", ".join(f"{i} ({p})" for i, p in skipped)]
    return "\n".join(lines) + "\n"


def render_csv(cfg: DictConfig, results: dict[str, dict | None]) -> str:
    header, rows = table_rows(cfg, results)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue()


def write_tables(cfg: DictConfig, run_dir, out_dir: Path) -> str:
    """Render the experiment's table to out_dir/table.{md,csv}; returns the Markdown."""
    results = collect(cfg, run_dir)
    markdown = render_markdown(cfg, results, run_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "table.md").write_text(markdown)
    (out_dir / "table.csv").write_text(render_csv(cfg, results))
    return markdown
