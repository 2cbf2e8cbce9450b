"""The leaderboard: every result under ``paths.results_root`` on one page.

    python eval.py leaderboard [leaderboard.sort=oracle_miou]

Reads every ``<results_root>/<experiment>/<row>/<column>/metrics.json`` and writes
``<results_root>/leaderboard.md`` (one table per dataset, best first by ``leaderboard.sort``) and
``leaderboard.csv`` (every entry, unrounded, for any other sorting). Each entry carries its config
hash (the same hash means the same computation), dataset, and the date, hardware and wall time
(training + its test) of the training run, from metrics.json's training record: a later
re-scoring by eval.py (say under DDP) changes none of them.
"""
from __future__ import annotations

import csv
import io
import json
import math
import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from bench.tables import fmt

# Columns of the page: metrics first (those present in any entry), then what identifies the run.
METRICS = ("miou", "oracle_miou", "pixel_acc", "mean_class_acc", "map", "precision_at_50", "top1", "top5",
           "regions_per_image", "seconds_per_image")
RUN_FIELDS = ("config_hash", "dataset", "finished_at", "hardware", "wall_seconds")


def collect_results(results_root: Path) -> list[dict]:
    """One flat entry per metrics.json under results_root (benchmark timings excluded)."""
    entries = []
    for path in sorted(Path(results_root).glob("*/*/*/metrics.json")):
        metrics = json.loads(path.read_text())
        experiment, row, col = path.parts[-4:-1]
        entry = {"experiment": experiment, "cell": f"{row}/{col}", "path": str(path)}
        entry.update({m: metrics[m] for m in METRICS if isinstance(metrics.get(m), (int, float))})
        run = metrics.get("training") or metrics  # the training run, not a later re-scoring (eval.py)
        entry.update({"config_hash": metrics.get("config_hash"), "dataset": metrics.get("dataset"),
                      "finished_at": run.get("finished_at"), "hardware": run.get("hardware")})
        if entry["dataset"] is None and (path.parent / "config.yaml").is_file():  # results older than run records
            entry["dataset"] = OmegaConf.load(path.parent / "config.yaml").dataset.name
        if entry["finished_at"] is None:
            entry["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(path.stat().st_mtime))
        wall = [run[k] for k in ("train_seconds", "eval_seconds") if isinstance(run.get(k), (int, float))]
        entry["wall_seconds"] = sum(wall) if wall else None
        entries.append(entry)
    return entries


def _sort_key(metric: str):
    def key(entry: dict):
        value = entry.get(metric)
        missing = value is None or (isinstance(value, float) and math.isnan(value))
        return (missing, -(value or 0.0) if not missing else 0.0, entry["experiment"], entry["cell"])
    return key


def render(entries: list[dict], sort: str) -> tuple[str, str]:
    """(Markdown, CSV) of the entries, best ``sort`` first."""
    metrics = [m for m in METRICS if any(m in e for e in entries)]
    columns = ["experiment", "cell", *metrics, *RUN_FIELDS]
    entries = sorted(entries, key=_sort_key(sort))
    lines = ["# RegionBench leaderboard", "",
             f"{len(entries)} results, best `{sort}` first within each dataset. "
             "Same config hash = same computation. Regenerate: `python eval.py leaderboard`.", ""]
    for dataset in sorted({str(e.get("dataset")) for e in entries}):
        rows = [e for e in entries if str(e.get("dataset")) == dataset]
        lines += [f"## {dataset}", "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
        for e in rows:
            cells = [e["experiment"], e["cell"], *(fmt(m, e.get(m)) for m in metrics),
                     str(e.get("config_hash") or "—"), dataset, str(e.get("finished_at") or "—"),
                     str(e.get("hardware") or "—"), fmt("train_seconds", e.get("wall_seconds"))]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=[*columns, "path"], lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    writer.writerows(entries)
    return "\n".join(lines), buf.getvalue()


def write_leaderboard(cfg: DictConfig) -> str:
    """Write leaderboard.{md,csv} under paths.results_root; returns the Markdown."""
    root = Path(cfg.paths.results_root)
    if cfg.leaderboard.sort not in METRICS:
        raise ValueError(f"leaderboard.sort={cfg.leaderboard.sort!r}; valid: {', '.join(METRICS)}")
    markdown, table = render(collect_results(root), cfg.leaderboard.sort)
    root.mkdir(parents=True, exist_ok=True)
    (root / "leaderboard.md").write_text(markdown)
    (root / "leaderboard.csv").write_text(table)
    return markdown
