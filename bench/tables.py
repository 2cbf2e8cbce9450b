"""Results tables: collect each cell's metrics.json and render Markdown and CSV."""
from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

from omegaconf import DictConfig

from bench.config import cell_config, table_cells


def collect(cfg: DictConfig, run_dir) -> dict[str, dict | None]:
    """cell -> its metrics.json content, or None when the cell has not been run."""
    out = {}
    for cell in table_cells(cfg):
        path = run_dir(cell_config(cfg, cell)) / "metrics.json"
        out[cell] = json.loads(path.read_text()) if path.is_file() else None
    return out


def _fmt(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return f"{100 * value:.2f}" if isinstance(value, float) and value <= 1.0 else f"{value}"


def table_rows(cfg: DictConfig, results: dict[str, dict | None]) -> tuple[list[str], list[list[str]]]:
    """Header and rows: one row per table row, per column ours and (if given) the paper's number."""
    metric = cfg.table.metric
    columns = list(cfg.table.columns) or ["default"]
    reference = dict(cfg.table.reference or {})
    header = ["row"]
    for col in columns:
        name = "" if col == "default" else f" {col}"
        header.append(f"{metric}{name}")
        if any(k.endswith(f"/{col}") or k == col for k in reference):
            header.append(f"paper{name}")
    rows = []
    for row in cfg.table.rows:
        line = [row]
        for col in columns:
            cell = f"{row}/{col}"
            metrics = results.get(cell)
            line.append(_fmt(metrics.get(metric)) if metrics else "—")
            if f"paper{'' if col == 'default' else ' ' + col}" in header:
                ref = reference.get(cell, reference.get(row))
                line.append("—" if ref is None else f"{ref}")
        rows.append(line)
    return header, rows


def render_markdown(cfg: DictConfig, results: dict[str, dict | None], run_dir) -> str:
    header, rows = table_rows(cfg, results)
    lines = [f"### {cfg.table.title or cfg.experiment}", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    missing = [c for c, m in results.items() if m is None]
    skipped = sorted({(s["id"], s["path"]) for m in results.values() if m
                      for split in m.get("skipped", {}).values() for s in split})
    if missing:
        lines += ["", "Missing cells:"] + [
            f"- {c}: run `python train.py experiment={cfg.experiment} cell={c}`" for c in missing]
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
