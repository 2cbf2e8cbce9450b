"""Results tables: collect each cell's metrics.json, render Markdown, CSV and LaTeX.

Per table column and metric the table shows our number and, where the experiment declares the
paper's number for any of its cells, the paper's number and the difference (ours - paper, in the
units shown: percentage points for IoUs). The CSV is long-form and unrounded (one line per cell
and metric), for plotting and sorting; the Markdown and LaTeX are for reading.
"""
from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from bench.config import cell_config, run_dir, table_cells, table_rows


def collect(cfg: DictConfig) -> dict[str, dict | None]:
    """cell -> its metrics.json content, or None when the cell has not been run."""
    out = {}
    for cell in table_cells(cfg):
        path = run_dir(cell_config(cfg, cell)) / "metrics.json"
        out[cell] = json.loads(path.read_text()) if path.is_file() else None
    return out


# How each metric is shown (scale, format); the paper's reference numbers are in the same units as ours.
METRIC_FORMATS = {
    "miou": (100, "{:.2f}"), "oracle_miou": (100, "{:.2f}"), "pixel_acc": (100, "{:.2f}"),
    "mean_class_acc": (100, "{:.2f}"), "coverage": (100, "{:.2f}"), "feature_cache_hit_rate": (100, "{:.2f}"),
    "seconds_per_image": (1, "{:.3f}"), "regions_per_image": (1, "{:.1f}"),
    "backbone_seconds_per_image": (1, "{:.4f}"), "train_seconds": (1, "{:.0f}"),
    # retrieval (bench/retrieval/evaluate.py): fractions, as the paper's Table 8 prints them
    "map": (1, "{:.3f}"), "precision_at_50": (1, "{:.3f}"), "chance_map": (1, "{:.3f}"),
    "search_seconds_per_query": (1, "{:.5f}"), "index_build_seconds": (1, "{:.3f}"),
    # activity classification (bench/tasks/video.py): accuracies in percent, as the paper's Table 9
    "top1": (100, "{:.1f}"), "top5": (100, "{:.1f}"),
}


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def fmt(metric: str, value) -> str:
    if _missing(value):
        return "—"
    if not isinstance(value, (int, float)):
        return str(value)
    scale, pattern = METRIC_FORMATS.get(metric, (1, "{:.4g}"))
    return pattern.format(scale * value)


def fmt_diff(metric: str, ours, paper) -> str:
    if _missing(ours) or _missing(paper):
        return "—"
    scale, pattern = METRIC_FORMATS.get(metric, (1, "{:.4g}"))
    return ("+" if ours >= paper else "") + pattern.format(scale * (ours - paper))


def _reference(cfg: DictConfig) -> dict:
    return OmegaConf.to_container(cfg.table.reference) if cfg.table.reference else {}


def _columns(cfg: DictConfig) -> list[str]:
    return list(cfg.table.columns) or ["default"]


def table_grid(cfg: DictConfig, results: dict[str, dict | None]) -> tuple[list[str], list[list[str]]]:
    """Header and rows as display strings: per column and metric, ours [, paper, Δ]."""
    reference = _reference(cfg)
    rows_by_name = table_rows(cfg)
    header, spec = ["row"], []
    for col in _columns(cfg):
        suffix = "" if col == "default" else f" {col}"
        for m in cfg.table.metrics:
            has_ref = any(isinstance(reference.get(f"{r}/{col}"), dict) and m in reference[f"{r}/{col}"]
                          for r in rows_by_name)
            header += [f"{m}{suffix}"] + ([f"paper {m}{suffix}", "Δ"] if has_ref else [])
            spec.append((col, m, has_ref))
    lines = []
    for row in rows_by_name:
        line = [row]
        for col, m, has_ref in spec:
            ours = (results.get(f"{row}/{col}") or {}).get(m)
            line.append(fmt(m, ours))
            if has_ref:
                paper = (reference.get(f"{row}/{col}") or {}).get(m)
                line += [fmt(m, paper), fmt_diff(m, ours, paper)]
        lines.append(line)
    return header, lines


def missing_commands(cfg: DictConfig, results: dict[str, dict | None], next_step="train.py") -> list[str]:
    """How to fill each missing cell: extract, then ``next_step`` (train.py, or eval.py for a task
    that does not train; a function of the cell where a table mixes tasks)."""
    def step(cell: str) -> str:
        return next_step(cell) if callable(next_step) else next_step

    return [f"- {c}: `python -m bench.extract experiment={cfg.experiment} cell={c} && "
            f"python {step(c)} experiment={cfg.experiment} cell={c}`" for c, m in results.items() if m is None]


def render_markdown(cfg: DictConfig, results: dict[str, dict | None], next_step="train.py") -> str:
    header, rows = table_grid(cfg, results)
    lines = [f"### {cfg.table.title or cfg.experiment}", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    if cfg.table.reference:
        lines += ["", "paper: the paper's number; Δ: ours - paper (percentage points for IoUs)."]
    missing = missing_commands(cfg, results, next_step)
    if missing:
        lines += ["", "Missing cells:"] + missing
    skipped = sorted({(s["id"], s["path"]) for m in results.values() if m
                      for split in m.get("skipped", {}).values() for s in split})
    if skipped:
        lines += ["", f"Unreadable images skipped in extraction ({len(skipped)}): "
                  + ", ".join(f"{i} ({p})" for i, p in skipped)]
    return "\n".join(lines) + "\n"


def render_csv(cfg: DictConfig, results: dict[str, dict | None]) -> str:
    """Long form, unrounded: row, column, metric, ours, paper, difference, config_hash."""
    reference = _reference(cfg)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["row", "column", "metric", "ours", "paper", "difference", "config_hash"])
    for row in table_rows(cfg):
        for col in _columns(cfg):
            metrics = results.get(f"{row}/{col}") or {}
            for m in cfg.table.metrics:
                ours, paper = metrics.get(m), (reference.get(f"{row}/{col}") or {}).get(m)
                diff = ours - paper if not (_missing(ours) or _missing(paper)) else None
                writer.writerow([row, col, m, "" if _missing(ours) else ours, "" if paper is None else paper,
                                 "" if diff is None else diff, metrics.get("config_hash", "")])
    return buf.getvalue()


def _latex_escape(text: str) -> str:
    for char, repl in (("\\", r"\textbackslash{}"), ("_", r"\_"), ("%", r"\%"), ("&", r"\&"), ("#", r"\#"),
                       ("Δ", r"$\Delta$"), ("—", "--")):
        text = text.replace(char, repl)
    return text


def render_latex(cfg: DictConfig, results: dict[str, dict | None]) -> str:
    """A booktabs tabular (needs \\usepackage{booktabs})."""
    header, rows = table_grid(cfg, results)
    lines = [r"\begin{tabular}{l" + "r" * (len(header) - 1) + "}", r"\toprule",
             " & ".join(_latex_escape(h) for h in header) + r" \\", r"\midrule"]
    lines += [" & ".join(_latex_escape(c) for c in r) + r" \\" for r in rows]
    lines += [r"\bottomrule", r"\end{tabular}"]
    return f"% {_latex_escape(str(cfg.table.title or cfg.experiment))}\n" + "\n".join(lines) + "\n"


def write_tables(cfg: DictConfig, out_dir: Path, next_step="train.py") -> str:
    """Render the experiment's table to out_dir/table.{md,csv,tex}; returns the Markdown. Missing
    cells are listed with their commands (``next_step`` after extraction)."""
    results = collect(cfg)
    markdown = render_markdown(cfg, results, next_step)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "table.md").write_text(markdown)
    (out_dir / "table.csv").write_text(render_csv(cfg, results))
    (out_dir / "table.tex").write_text(render_latex(cfg, results))
    return markdown
