"""Checks on a run's input files before any work starts: the dataset root, and every checkpoint
file the chosen region source and backbone name (a filled feature cache stands in for missing
backbone weights)."""
from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from bench.config import cell_configs

log = logging.getLogger("regionbench.config")


def check_inputs(cfg: DictConfig) -> None:
    """Before any work starts: in every selected cell, the dataset root exists (unless the built-in
    mini set is generated there) and every ``checkpoint`` file of the chosen region source and
    backbone exists. Raises FileNotFoundError listing all that are missing."""
    from bench.config_checks import ConfigError
    from bench.pipeline import worker_count

    try:
        worker_count(cfg.extract.workers, 0)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    missing: dict[str, list[str]] = {}  # what is missing -> the cells that need it

    def checkpoints(node, key: str):
        if isinstance(node, dict):
            for k, v in node.items():
                yield from checkpoints(v, f"{key}.{k}")
        elif key.endswith(".checkpoint") and node is not None:
            yield key, Path(str(node)).expanduser()

    for cell, ccfg in cell_configs(cfg).items():
        if ccfg.dataset.generate is None and not Path(ccfg.dataset.root).exists():
            missing.setdefault(f"dataset.root={ccfg.dataset.root}: no such directory (set dataset.root to the "
                               "downloaded dataset)", []).append(cell)
        chosen = [f"backbone.params.{ccfg.backbone.name}"]
        if ccfg.regions.source != "none":
            chosen.append(f"regions.params.{ccfg.regions.source}")
        for node in chosen:
            params = OmegaConf.to_container(OmegaConf.select(ccfg, node, default={}) or {}, resolve=True)
            for key, path in checkpoints(params, node):
                if path.is_file():
                    continue
                if node.startswith("backbone.") and _feature_cache_filled(ccfg, params):
                    log.warning("%s=%s: no such file; %s reads its grids from the feature cache, and an image "
                                "missing from it will stop extraction", key, path, cell)
                    continue
                missing.setdefault(f"{key}={path}: no such file", []).append(cell)
    if missing:
        lines = [f"{what} (cells: {', '.join(cells)})" for what, cells in missing.items()]
        raise FileNotFoundError(
            "missing inputs, nothing was written:\n  " + "\n  ".join(lines) + "\nCheckpoints are local files "
            "under paths.weights_root ($REGIONBENCH_WEIGHTS), never downloaded; python -m bench.tools.random_weights "
            "writes random-weight stand-ins for smoke runs")


def _feature_cache_filled(cfg: DictConfig, params: dict) -> bool:
    """Whether the cell's backbone config has grids in the feature cache (a copied cache needs no weights)."""
    from bench.backbones.cache import cache_dir

    root = cfg.extract.feature_cache
    return root is not None and (cache_dir(root, cfg.dataset.name, cfg.backbone.name, params) / "meta.json").is_file()
