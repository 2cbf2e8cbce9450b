"""Configuration: OmegaConf in three layers, in struct mode.

    defaults (bench/defaults.yaml)  <-  experiments/<name>.yaml  <-  key=value overrides

An experiment file states only what differs from the defaults (no inheritance
chains). Every value a layer sets is checked as it is merged (types and enumerated choices,
bench/config_checks.py). In a table cell the layers are: defaults <- experiment <- the cell's column <- its row
<- the command line (which always wins). An unknown key anywhere is an error that names the key and the nearest
valid ones. Every run saves its resolved config beside its results.

A results table is declared in the experiment under ``table:``: ``rows`` and
``columns`` map a name to a dict of dotted overrides. A *cell* is ``row/column``;
``cell_config(cfg, "region_linear/minivoc")`` applies both override dicts.

Named datasets: ``dataset: miniade`` (in any layer; ``dataset=miniade`` on the command line) makes
the ``dataset`` node a copy of ``datasets.miniade`` (a plain lookup in bench/defaults.yaml), written
just before that layer's own ``dataset.*`` keys, which win over it. Presets are visible:
``model.preset`` / ``model.compat`` expand in the layer that names them (bench/presets.py), and
each expansion is recorded in ``preset_applied`` (which layer, which preset, the keys it set).
"""
from __future__ import annotations

import copy
import difflib
import fnmatch
import functools
import os
import re
from pathlib import Path
from typing import Iterable

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError

from bench.atomic import digest, write_atomic
from bench.config_checks import DEFAULTS, OPEN_NODES, ConfigError, check_extract_share, check_values

REPO_ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS_DIR = Path(os.environ.get("REGIONBENCH_EXPERIMENTS", REPO_ROOT / "experiments"))


# Keys added to existing nodes after shard sets and runs had been made without them (dotted paths, ``*`` for
# any one name): while such a key holds this value (compared by identity: False, None) it is left out of config
# hashes, shard digests and feature-cache names, so what was made before keeps its name and no finished cell is
# recomputed.
HASH_NEUTRAL = {
    "backbone.params.maskclip_*.attention_keys": False,  # MaskCLIP's keys appended, for key smoothing
    "backbone.params.siglip2_*.project": False,          # SigLIP 2's dense path through its attention-pool head
    "zeroshot.key_smoothing": None,                      # MaskCLIP's key smoothing threshold
}


def without_neutral(value, path: str = ""):
    """``value`` (a resolved config, or the part of one at dotted ``path``) without HASH_NEUTRAL keys at their
    neutral value."""
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            full = f"{path}.{key}" if path else str(key)
            if any(item is neutral and fnmatch.fnmatchcase(full, pattern) for pattern, neutral in HASH_NEUTRAL.items()):
                continue
            out[key] = without_neutral(item, full)
        return out
    if isinstance(value, list):
        return [without_neutral(v, path) for v in value]
    return value


def _digest(*nodes) -> str:
    """Short hash of config values: shard sets made with different settings never share a directory."""
    return digest([without_neutral(OmegaConf.to_container(n, resolve=True), n._get_full_key(None))
                   if isinstance(n, DictConfig) else n for n in nodes])


if not OmegaConf.has_resolver("digest"):
    OmegaConf.register_new_resolver("digest", _digest)


def _all_keys(node, prefix: str = "") -> list[str]:
    keys = []
    for key in node:
        full = f"{prefix}{key}"
        keys.append(full)
        value = node._get_node(key)
        if isinstance(value, DictConfig) and not value._is_missing() and not value._is_none():
            keys.extend(_all_keys(value, full + "."))
    return keys


def nearest_keys(cfg: DictConfig, key: str, n: int = 3) -> list[str]:
    """The valid dotted keys of ``cfg`` closest to ``key``: same last component first
    ('lr' -> 'model.lr'), then the closest spellings of the full key and of its last part."""
    keys = _all_keys(cfg)
    leaf = key.rsplit(".", 1)[-1]
    leaves: dict[str, list[str]] = {}
    for k in keys:
        leaves.setdefault(k.rsplit(".", 1)[-1], []).append(k)
    found = list(leaves.get(leaf, []))
    found += difflib.get_close_matches(key, keys, n=n, cutoff=0.6)
    for close in difflib.get_close_matches(leaf, list(leaves), n=n, cutoff=0.6):
        found += leaves[close]
    return list(dict.fromkeys(k for k in found if k != key))[:n]


def _unknown_key_error(cfg: DictConfig, key: str, source: str) -> ConfigError:
    close = nearest_keys(cfg, key)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    return ConfigError(f"unknown config key '{key}' (from {source}).{hint}")


def select_dataset(base: DictConfig, name, source: str) -> DictConfig:
    """The node ``datasets.<name>`` of ``base`` (unresolved): what ``dataset: <name>`` stands for."""
    if not isinstance(name, str) or name not in base.datasets:
        raise ConfigError(f"config key 'dataset' (from {source}) is {name!r}; valid: {', '.join(base.datasets)} "
                          "(a name under datasets:, or set single keys: dataset.root=...)")
    return OmegaConf.create(OmegaConf.to_container(base.datasets[name], resolve=False))


def dotted_layer(pairs: Iterable[tuple[str, object]]) -> tuple[DictConfig, str | None]:
    """A layer given as dotted ``(key, value)`` pairs (a table row, column or cell): the nested
    config of its keys, and the dataset it names with ``dataset: NAME`` (None if none)."""
    update, name = OmegaConf.create(), None
    for key, value in pairs:
        if key == "dataset" and not isinstance(value, (dict, DictConfig)):
            name = value
        else:
            OmegaConf.update(update, key, value, force_add=True)
    return update, name


def command_line_layer(overrides: list[str]) -> tuple[DictConfig, str | None]:
    """The command line's ``key=value`` list as a layer, and the dataset ``dataset=NAME`` names."""
    def names_dataset(item: str) -> bool:  # dataset=NAME (dataset={...} is a plain merge)
        return item.split("=", 1)[0] == "dataset" and not isinstance(OmegaConf.from_dotlist([item]).dataset, DictConfig)

    names = [OmegaConf.from_dotlist([o]).dataset for o in overrides if names_dataset(o)]
    return OmegaConf.from_dotlist([o for o in overrides if not names_dataset(o)]), (names[-1] if names else None)


def _merge_checked(base: DictConfig, update: DictConfig, source: str, dataset: str | None = None) -> DictConfig:
    """Merge ``update`` into ``base``; an unknown key names its nearest valid keys. A named dataset
    (``dataset``, or ``dataset: NAME`` in a file layer) first replaces ``base.dataset`` with
    ``datasets.NAME``; a ``model.preset`` or ``model.compat`` in ``update`` brings its values
    (bench/presets.py) under ``update``'s own keys, recorded in ``preset_applied``."""
    from bench.presets import expand_presets, preset_record

    if "dataset" in update and not isinstance(update._get_node("dataset"), DictConfig):
        dataset = update.dataset
        update = OmegaConf.masked_copy(update, [k for k in update if k != "dataset"])
    if dataset is not None:
        node = select_dataset(base, dataset, source)
        check_values(OmegaConf.create({"dataset": node}), source)
        base = copy.deepcopy(base)
        base.dataset = node  # replaced, not merged: nothing of the previous dataset stays
    try:
        record = preset_record(update, source)
        update = expand_presets(update)
    except ValueError as err:
        raise ConfigError(f"{err} (from {source})") from None
    check_values(update, source)
    for key in _all_keys(update):
        if OmegaConf.select(base, key, default="__missing__") == "__missing__":
            parent = key.rsplit(".", 1)[0] if "." in key else ""
            parent_node = OmegaConf.select(base, parent) if parent else base
            # A key under an open (non-struct) dict such as table.rows is allowed.
            if isinstance(parent_node, DictConfig) and OmegaConf.is_struct(parent_node):
                raise _unknown_key_error(base, key, source)
            if parent_node is None:  # a None-valued section being filled in
                continue
    try:
        merged = OmegaConf.merge(base, update)
    except (ConfigAttributeError, ConfigKeyError) as err:
        raise _unknown_key_error(base, str(err.full_key), source) from err
    if record:  # the command line, re-applied over each cell, is recorded where it was applied last
        kept = [r for r in OmegaConf.to_container(merged.preset_applied) if r != record]
        merged.preset_applied = [*kept, record]
    return merged


def load_defaults() -> DictConfig:
    """bench/defaults.yaml with its ``dataset: NAME`` replaced by the named node."""
    cfg = OmegaConf.load(DEFAULTS)
    cfg.dataset = select_dataset(cfg, cfg.dataset, str(DEFAULTS))
    return cfg


def check_trainer_args(cfg: DictConfig) -> None:
    """``trainer`` takes any pytorch_lightning.Trainer argument; a misspelt one names the nearest."""
    import inspect

    import pytorch_lightning as pl

    valid = set(inspect.signature(pl.Trainer.__init__).parameters) - {"self", "logger", "callbacks"}
    for key in cfg.trainer:
        if key not in valid:
            close = difflib.get_close_matches(key, sorted(valid), n=3, cutoff=0.6)
            hint = f" Did you mean: {', '.join('trainer.' + c for c in close)}?" if close else ""
            raise ConfigError(f"unknown config key 'trainer.{key}': not a pytorch_lightning.Trainer argument.{hint}")


def parse_overrides(argv: Iterable[str]) -> tuple[str | None, list[str]]:
    """Split ``experiment=NAME`` from the other ``key=value`` arguments."""
    experiment, rest = None, []
    for arg in argv:
        if "=" not in arg:
            raise ConfigError(f"argument '{arg}' is not key=value (example: trainer.devices=2)")
        key, value = arg.split("=", 1)
        if key == "experiment":
            experiment = value
        elif key == "cell" and not value.startswith(("'", '"')):
            rest.append(f"cell='{value}'")  # a pattern like */voc is not YAML: keep it a string
        else:
            rest.append(arg)
    return experiment, rest


def experiment_path(name: str) -> Path:
    path = Path(name) if name.endswith((".yaml", ".yml")) else EXPERIMENTS_DIR / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in EXPERIMENTS_DIR.glob("*.yaml"))
        raise ConfigError(f"experiment file {path} not found. Known experiments: {', '.join(known)}")
    return path


def load_config(argv: Iterable[str] = (), experiment: str | None = None) -> DictConfig:
    """Defaults <- experiment file <- overrides, resolved lazily, in struct mode."""
    exp_from_argv, overrides = parse_overrides(argv)
    experiment = exp_from_argv or experiment
    cfg = load_defaults()
    OmegaConf.set_struct(cfg, True)
    for node in OPEN_NODES:
        OmegaConf.set_struct(OmegaConf.select(cfg, node), False)
    if experiment:
        path = experiment_path(experiment)
        cfg = _merge_checked(cfg, OmegaConf.load(path), str(path))
        cfg.experiment = Path(experiment).stem
    if overrides:
        update, dataset = command_line_layer(overrides)
        cfg = _merge_checked(cfg, update, "command line", dataset)
        cfg.overrides = list(overrides)  # re-applied over table rows/columns: the command line wins
    OmegaConf.set_struct(cfg, True)
    check_trainer_args(cfg)

    check_table(cfg)
    check_extract_share(cfg)
    return student_config(cfg)


def check_table(cfg: DictConfig) -> None:
    """The values every table row, column, cell and sweep point sets, before any cell runs."""
    table = cfg.table

    def check(pairs, source: str) -> None:
        update, dataset = dotted_layer(pairs)
        if dataset is not None:  # a named dataset: a name under datasets:
            select_dataset(cfg, dataset, source)
        check_values(update, source)

    for name in ("rows", "columns", "cells"):
        for entry, overrides in (table[name] or {}).items():
            check(overrides.items_ex(resolve=False) if overrides else [], f"table.{name}.{entry}")
    for key, values in (table.sweep.items_ex(resolve=False) if table.sweep else []):
        for value in values if isinstance(values, ListConfig) else [values]:
            check([(key, value)], f"table.sweep.{key}")


def apply_overrides(cfg: DictConfig, overrides: dict | DictConfig, source: str) -> DictConfig:
    """Apply a dict of dotted ``key: value`` overrides (a table row or column)."""
    update, dataset = dotted_layer((overrides or {}).items())
    merged = _merge_checked(cfg, update, source, dataset)
    OmegaConf.set_struct(merged, True)
    return merged


def _sweep_rows(sweep: dict) -> dict[str, dict]:
    """``{key: [v1, v2], ...}`` -> one row per combination, named ``lr=0.1,decoder=mlp``."""
    import itertools

    keys = list(sweep)
    leaves = [k.rsplit(".", 1)[-1] for k in keys]
    names = [leaf if leaves.count(leaf) == 1 else key for key, leaf in zip(keys, leaves)]
    for key, values in sweep.items():
        if not isinstance(values, list) or not values:
            raise ConfigError(f"table.sweep.{key} must be a non-empty list of values, got {values!r}")
    rows = {}
    for combo in itertools.product(*(sweep[k] for k in keys)):
        name = ",".join(f"{n}={str(v).replace('/', '_')}" for n, v in zip(names, combo))
        rows[name] = dict(zip(keys, combo))
    return rows


def table_rows(cfg: DictConfig) -> dict[str, dict]:
    """Row name -> its overrides: ``table.rows``, each crossed with the ``table.sweep`` grid if one is
    declared (row ``mlp`` x ``{model.lr: [0.1, 0.01]}`` -> ``mlp,lr=0.1`` and ``mlp,lr=0.01``)."""
    rows = OmegaConf.to_container(cfg.table.rows) if cfg.table.rows else {}
    sweep = OmegaConf.to_container(cfg.table.sweep) if cfg.table.sweep else {}
    if not sweep:
        return rows
    grid = _sweep_rows(sweep)
    if not rows:
        return grid
    return {f"{row},{name}": {**overrides, **point} for row, overrides in rows.items()
            for name, point in grid.items()}


def table_cells(cfg: DictConfig) -> list[str]:
    """All ``row/column`` cell names of the experiment's table, in declaration order."""
    rows = table_rows(cfg)
    if not rows:
        return []
    columns = list(cfg.table.columns) if cfg.table.columns else ["default"]
    return [f"{row}/{col}" for row in rows for col in columns]


def cell_config(cfg: DictConfig, cell: str) -> DictConfig:
    """The config of one table cell: the experiment with its column, row and cell overrides."""
    cells = table_cells(cfg)
    if cell not in cells:
        raise ConfigError(f"cell '{cell}' is not in experiment '{cfg.experiment}'. Cells: {', '.join(cells)}")
    row, col = cell.split("/", 1)
    out = cfg
    if cfg.table.columns:  # a column sets up a dataset; the row, the variable studied, wins over it
        out = apply_overrides(out, cfg.table.columns[col], f"table.columns.{col}")
    out = apply_overrides(out, table_rows(cfg)[row], f"table.rows.{row}")
    if cfg.table.cells and cell in cfg.table.cells:  # what only this row in this column needs
        out = apply_overrides(out, cfg.table.cells[cell], f"table.cells.{cell}")
    if cfg.overrides:
        update, dataset = command_line_layer(list(cfg.overrides))
        out = _merge_checked(out, update, "command line", dataset)
        OmegaConf.set_struct(out, True)
    out.cell = cell
    return student_config(out)


def student_config(cfg: DictConfig) -> DictConfig:
    """``cfg``; with ``pseudo_labels.teacher`` (a student trained on a zero-shot teacher's labels,
    bench/pseudo_labels.py) the teacher checked and the shards in ``<extract.shard_dir>-teacher-<hash>``:
    its train shards hold the teacher's labels, so no other teacher (or none) may share them."""
    if cfg.pseudo_labels.teacher is None:
        return cfg
    if TASK_NODES["pseudo_labels"] != cfg.task:
        raise ConfigError(f"pseudo_labels.teacher trains a segmentation student on a teacher's labels, but "
                          f"task={cfg.task}: set pseudo_labels.teacher=null or task=segmentation")
    raw = str(OmegaConf.to_container(cfg.extract)["shard_dir"])
    cfg.extract.shard_dir = f"{re.sub(r'-teacher-[0-9a-f]{12}$', '', raw)}-teacher-{teacher_hash(cfg)}"
    return cfg


def teacher_config(cfg: DictConfig) -> DictConfig:
    """The zero-shot run whose predictions label a student's train split: ``cfg`` with task=zeroshot,
    no table, the default shard directory, ``pseudo_labels.teacher`` applied as a layer (checked as any
    layer), and its val split = the train split."""
    base = copy.deepcopy(cfg)
    base.task, base.pseudo_labels.teacher = "zeroshot", None
    base.cell, base.experiment, base.overrides, base.rerun, base.pictures = None, None, [], False, 0
    defaults = _defaults_container()
    base.table = defaults["table"]  # a table's rows would turn it back into the student
    base.extract.shard_dir = defaults["extract"]["shard_dir"]
    teacher = apply_overrides(base, cfg.pseudo_labels.teacher, "pseudo_labels.teacher")
    if teacher.task != "zeroshot" or teacher.pseudo_labels.teacher is not None:
        raise ConfigError("pseudo_labels.teacher sets task or pseudo_labels: the teacher is a zero-shot run "
                          "(task=zeroshot) without a teacher of its own")
    teacher.dataset.val_split = teacher.dataset.train_split
    return teacher


@functools.lru_cache(maxsize=None)
def _defaults_container() -> dict:
    return OmegaConf.to_container(OmegaConf.load(DEFAULTS))


# Keys a zero-shot teacher's predictions do not depend on (its student's training): out of the teacher's
# hash, so students that differ only in them share one teacher.
STUDENT_ONLY = ("seed", "model.preset", "model.decoder", "model.decoder_params", "model.label_threshold",
                "model.label_denominator", "model.loss_weighting", "model.lr", "model.weight_decay",
                "model.scheduler", "model.warmup_epochs", "model.cosine_t_max", "model.report_oracle",
                "data.batch_size", "data.region_batch_size", "data.region_buffer", "data.shuffle_buffer",
                "trainer.max_epochs", "trainer.max_steps", "trainer.check_val_every_n_epoch", "trainer.deterministic",
                "trainer.limit_train_batches", "trainer.limit_val_batches", "trainer.val_check_interval",
                "trainer.accumulate_grad_batches", "trainer.gradient_clip_val")


def teacher_hash(cfg: DictConfig) -> str:
    """The config hash of a student's teacher (``teacher_config``) without STUDENT_ONLY keys."""
    return config_hash(teacher_config(cfg), ignore=STUDENT_ONLY)


def selected_cells(cfg: DictConfig) -> list[str]:
    """The cells this invocation runs: ``cell=row/col``, a pattern (``cell='*/minivoc'``), or all."""
    if not cfg.cell:
        return table_cells(cfg) or ["default/default"]
    pattern = str(cfg.cell)
    if not any(c in pattern for c in "*?["):
        return [pattern]
    import fnmatch

    chosen = [c for c in table_cells(cfg) if fnmatch.fnmatchcase(c, pattern)]
    if not chosen:
        raise ConfigError(f"cell={pattern} matches no cell of '{cfg.experiment}'. Cells: {', '.join(table_cells(cfg))}")
    return chosen


def cell_configs(cfg: DictConfig) -> dict[str, DictConfig]:
    """{cell: its config} for the cells this invocation runs (the config itself without a table)."""
    if not table_rows(cfg):
        return {"default/default": cfg}
    return {cell: cell_config(cfg, cell) for cell in selected_cells(cfg)}


# Keys that say where and how a run executes, not what it computes: left out of the config hash.
def run_dir(cfg: DictConfig) -> Path:
    """results/<experiment>/<row>/<column> for a table cell, results/<experiment>/default otherwise."""
    cell = str(cfg.cell) if cfg.cell else "default/default"
    return Path(cfg.paths.results_root) / str(cfg.experiment or "adhoc") / cell


EXECUTION_KEYS = (
    "experiment", "cell", "overrides", "resume", "rerun", "save_predictions", "pictures", "print_config", "table",
    "logger", "launcher",
    "paths", "data.num_workers", "data.verify", "extract.progress", "extract.workers", "extract.backbone_batch", "extract.index", "extract.count",
    "extract.shard_dir", "extract.feature_cache", "regions.cache", "pseudo_labels.dir",  # locations of what the other keys define
    "trainer.enable_progress_bar", "trainer.enable_model_summary", "trainer.log_every_n_steps",
    "datasets", "preset_applied",  # the catalogue `dataset` is picked from; a record of values already in the config
)


TASK_NODES = {"zeroshot": "zeroshot", "pseudo_labels": "segmentation"}  # config node -> the one task that reads it


def config_hash(cfg: DictConfig, ignore: tuple[str, ...] = ()) -> str:
    """12 hex digits identifying what a run computes: the resolved config without EXECUTION_KEYS,
    the launch keys below (and ``ignore``), with file locations under paths.* written relative to them
    (a moved checkout keeps its hashes).

    Devices, nodes, strategy and accelerator are left out so that a DDP evaluation, or a run resumed
    under another launch, keeps the training's hash; the training's world size is in its metrics.json
    (training on W devices draws W batches per step: other numbers than on one device)."""
    launch = ("trainer.accelerator", "trainer.devices", "trainer.num_nodes", "trainer.strategy", "trainer.plugins",
              "trainer.enable_checkpointing", "trainer.default_root_dir", "trainer.profiler",
              "trainer.num_sanity_val_steps", "checkpoint")

    resolved = OmegaConf.to_container(cfg, resolve=True)
    roots = sorted(((str(v).rstrip("/"), f"${{paths.{k}}}") for k, v in resolved["paths"].items() if v),
                   key=lambda kv: -len(kv[0]))

    def relative(value):
        if isinstance(value, dict):
            return {k: relative(v) for k, v in value.items()}
        if isinstance(value, list):
            return [relative(v) for v in value]
        if isinstance(value, str):
            for root, name in roots:
                if value == root or value.startswith(root + "/"):
                    return name + value[len(root):]
        return value

    # a node only one task reads, added after runs of the others were made, stays out of their hashes
    other_tasks = [node for node, task in TASK_NODES.items() if resolved.get("task") != task]
    teacher = (resolved.get("pseudo_labels") or {}).get("teacher")
    if teacher is not None and "pseudo_labels" not in other_tasks:  # a student: its teacher enters, by hash
        resolved["pseudo_labels"] = {"teacher": teacher, "teacher_hash": teacher_hash(cfg)}
    else:  # without one the node stays out: the hashes of runs made before it existed hold
        other_tasks.append("pseudo_labels")
    for key in (*EXECUTION_KEYS, *launch, *ignore, *other_tasks):
        parent, _, leaf = key.rpartition(".")
        node = resolved
        for part in parent.split(".") if parent else []:
            node = node.get(part, {})
        node.pop(leaf, None)
    return digest(without_neutral(relative(resolved)), length=12)


def save_config(cfg: DictConfig, path: Path) -> None:
    """Write the resolved config (atomically) so a run can be reproduced."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, OmegaConf.to_yaml(cfg, resolve=True).encode())


def _leaves(node, prefix: str = "") -> dict[str, object]:
    """{dotted key: value} of every leaf of a resolved config (empty mappings and lists are leaves)."""
    if isinstance(node, dict) and node:
        out = {}
        for key, value in node.items():
            out.update(_leaves(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: node}


def explain(cfg: DictConfig) -> str:
    """``print_config=true``: each selected cell's resolved config as ``key: value  # layer``, the layer
    being the last one that set it: defaults, the experiment file, the table column, row and cell, or
    the command line; keys a preset (``model.preset``, ``model.compat``, ``weights``) wrote name it."""
    import yaml

    experiment = str(cfg.experiment) if cfg.experiment else None
    base = load_config([])
    chain_start = [("bench/defaults.yaml", base)]
    exp = load_config([], experiment=experiment) if experiment else base
    if experiment:
        chain_start.append((f"experiments/{experiment}.yaml", exp))
    blocks = []
    for cell, final in cell_configs(cfg).items():
        chain = list(chain_start)
        if cell != "default/default":
            row, col = cell.split("/", 1)
            layer = exp
            steps = [(f"table.columns.{col}", (cfg.table.columns or {}).get(col)),
                     (f"table.rows.{row}", table_rows(cfg).get(row)),
                     (f"table.cells.{cell}", (cfg.table.cells or {}).get(cell))]
            for name, overrides in steps:
                if overrides:
                    layer = apply_overrides(layer, overrides, name)
                    chain.append((name, layer))
        chain.append(("command line", final))
        values = [(name, _leaves(OmegaConf.to_container(c, resolve=True))) for name, c in chain]
        presets = {}
        for record in OmegaConf.to_container(final.preset_applied, resolve=True):
            names = ", ".join(f"{k}={v}" for k, v in record.items() if k not in ("layer", "set"))
            presets.update({key: f"{record['layer']} ({names})" for key in record["set"]})
        source = {}
        previous: dict = {}
        for name, leaves in values:
            for key, value in leaves.items():
                if key not in previous or previous[key] != value:
                    source[key] = name
            previous = leaves
        lines = [f"# cell {cell}"]
        for key, value in previous.items():
            if key.startswith(("datasets.", "table.", "preset_applied")):
                continue
            text = yaml.safe_dump(value, default_flow_style=True, width=10**6).strip().removesuffix("\n...")
            lines.append(f"{key}: {text}  # {presets.get(key, source.get(key, 'bench/defaults.yaml'))}")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + "\n"
