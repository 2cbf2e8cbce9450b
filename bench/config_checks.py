"""Checks of a loaded config, before any work starts: the values each layer sets (types and
enumerated choices) and the input files the selected cells name.

Values: every error names the key, the value, what is valid and the layer it came from
(``config key 'pooling.mode' (from command line) is 'maxx'; valid: mean, max, downsample``).
"""
from __future__ import annotations

import fnmatch
import functools
import importlib
import logging
import typing
from pathlib import Path
from typing import Callable, Iterable

from omegaconf import DictConfig, ListConfig, OmegaConf


log = logging.getLogger("regionbench.config")
DEFAULTS = Path(__file__).with_name("defaults.yaml")  # also the schema: a key's default gives its type

# Nodes whose keys are the user's own names (table rows, columns, reference numbers), and
# `trainer`, which takes any pytorch_lightning.Trainer argument (checked in bench.runs).
OPEN_NODES = ("table.rows", "table.columns", "table.cells", "table.reference", "table.sweep", "trainer")


class ConfigError(ValueError):
    """A config key, value or file that the user must fix."""

# Every value a layer sets is checked as the layer is merged, naming the key, the value, what is
# valid and the layer. A key takes the type listed below (fnmatch patterns: keys whose default is
# null, and integer defaults that take any number), else the type of its default in
# bench/defaults.yaml (an int where the default is a float is fine; a null default not listed
# takes any value); `trainer.*` takes the types pytorch_lightning.Trainer declares.
KEY_TYPES = {
    int: ("dataset.max_images", "dataset.max_frames_per_scene", "dataset.short_side", "multiview.scene_frames",
          "video.width", "extract.index",
          "extract.count", "model.in_dim", "model.cosine_t_max",
          "model.decoder_params.transformer.width", "retrieval.search_k", "regions.params.*.points_per_*",
          "regions.params.*.crop_n_*", "regions.params.*.min_mask_region_area"),
    float: ("regions.params.*thresh*", "regions.params.*.stability_score_offset",
            "regions.params.*.crop_overlap_ratio", "regions.params.*.compactness"),
    bool: ("regions.params.*.use_m2m", "regions.params.*.multimask_output", "backbone.params.*.tiny",
           "backbone.params.*.project"),
    str: ("experiment", "cell", "table.title", "model.preset", "model.compat", "weights", "regions.params.*.preset"),
    list: ("backbone.params.*.layers",),
    dict: ("pseudo_labels.teacher",),  # dotted overrides (bench/pseudo_labels.py)
    typing.Union[int, typing.Literal["auto"]]: ("extract.workers",),
}
# Keys with a non-null default that null switches off (see bench/defaults.yaml).
NULLABLE = ("dataset.generate", "regions.cache", "extract.feature_cache", "regions.params.sam_slic.sam_params")


def _module(name: str):
    return importlib.import_module(name)


# Enumerated keys -> their valid values, read from the registry that defines them (imported only
# when a layer sets the key). fnmatch patterns allowed.
CHOICES: dict[str, Callable[[], Iterable]] = {
    "task": lambda: _module("bench.tasks").TASKS,
    "dataset.layout": lambda: _module("datamodules.datasets").LAYOUTS,
    "regions.source": lambda: (*_module("bench.regions").REGION_SOURCES, "none"),
    "regions.params.sam.model_type": lambda: _module("bench.regions.sam").MODEL_TYPES["sam"],
    "regions.params.hq_sam.model_type": lambda: _module("bench.regions.sam").MODEL_TYPES["hq_sam"],
    "regions.params.mobile_sam.model_type": lambda: _module("bench.regions.sam").MODEL_TYPES["mobile_sam"],
    "regions.params.sam2.model_type": lambda: _module("bench.regions.sam2").MODEL_TYPES,
    "regions.params.sam2.version": lambda: _module("bench.regions.sam2").VERSIONS,
    "regions.params.*.preset": lambda: _module("bench.regions.sam").AMG_PRESETS,
    "regions.params.sam_slic.sam": lambda: (*_module("bench.regions.sam").SAM_FAMILY,
                                            *_module("bench.regions.sam2").SAM2_FAMILY),
    "backbone.name": lambda: _module("bench.backbones").BACKBONES,
    "backbone.params.*.dtype": lambda: _module("bench.backbones.vit").DTYPES,
    "pooling.mode": lambda: _module("bench.pooling").POOLING_MODES,
    "data.verify": lambda: ("exists", "size", "sha256"),  # bench.shards.verify_shards
    "model.preset": lambda: _module("bench.presets").PRESETS,
    "model.compat": lambda: _module("bench.presets").COMPAT,
    "weights": lambda: _module("bench.presets").WEIGHTS,
    "model.kind": lambda: {**_module("models.segmenter").MODELS, **_module("models.multiview").MODELS,
                           **_module("models.video").MODELS},
    "model.decoder": lambda: _module("models.decoders").DECODERS,
    "model.label_denominator": lambda: _module("bench.labels").LABEL_DENOMINATORS,
    "model.loss_weighting": lambda: _module("models.segmenter").LOSS_WEIGHTINGS,
    "model.uncovered": lambda: _module("bench.metrics").UNCOVERED_POLICIES,
    "model.scheduler": lambda: ("cosine", "none"),  # models.segmenter.configure_optimizers
    "logger.kind": lambda: ("csv", "tensorboard", "wandb", "none"),  # bench.runs.build_logger
    "leaderboard.sort": lambda: _module("bench.leaderboard").METRICS,
    "multiview.context": lambda: _module("models.multiview").CONTEXTS,
    "launcher.kind": lambda: ("none", "slurm", "local"),  # bench.launcher.executor
    "retrieval.method": lambda: _module("bench.retrieval.evaluate").METHODS,
    "retrieval.index": lambda: _module("bench.retrieval.index").KINDS,
    "retrieval.similarity": lambda: _module("bench.retrieval.index").SIMILARITIES,
    "retrieval.no_positives": lambda: ("error", "skip"),  # bench.retrieval.evaluate.evaluate_retrieval
}


@functools.lru_cache(maxsize=None)
def _defaults() -> DictConfig:
    """bench/defaults.yaml with ``dataset`` the default named dataset's node (the schema of ``dataset.*``)."""
    cfg = OmegaConf.load(DEFAULTS)
    cfg.dataset = cfg.datasets[cfg.dataset]
    return cfg


def _schema_key(key: str) -> str:
    """A named dataset's key is typed and checked as the same key of ``dataset``
    (``datasets.voc.generate`` -> ``dataset.generate``)."""
    parts = key.split(".")
    return ".".join(["dataset", *parts[2:]]) if parts[0] == "datasets" and len(parts) > 2 else key


def _match(table, key: str):
    """The entry of ``table`` (dotted key or fnmatch pattern -> value) for ``key``, or None."""
    return next((v for pattern, v in table.items() if fnmatch.fnmatchcase(key, pattern)), None)


def _default(key: str):
    """The key's value in bench/defaults.yaml, resolved; "__missing__" if it has none."""
    try:
        return OmegaConf.select(_defaults(), key, default="__missing__")
    except Exception:  # an interpolation that only resolves in a full config
        return "__missing__"


def _expected_type(key: str) -> type | None:
    """The type a key's value must have (KEY_TYPES, else its default's); None = unchecked."""
    key = _schema_key(key)
    listed = next((t for t, patterns in KEY_TYPES.items() for p in patterns if fnmatch.fnmatchcase(key, p)), None)
    if listed is not None:
        return listed
    default = _default(key)
    if isinstance(default, DictConfig):
        return dict
    if isinstance(default, ListConfig):
        return list
    return None if default is None or default == "__missing__" else type(default)


def _fits(value, expected) -> bool | None:
    """Whether a YAML value fits a type or a typing hint; None when the hint names no type a YAML
    value can have (a Strategy or Callback class), so nothing can be checked."""
    origin, args = typing.get_origin(expected), typing.get_args(expected)
    if origin is typing.Union or type(expected).__name__ == "UnionType":
        found = [f for f in (_fits(value, a) for a in args) if f is not None]
        return any(found) if found else None
    if origin is typing.Literal:
        return any(type(value) is type(a) and value == a for a in args)
    if expected is dict or origin is dict:
        return isinstance(value, (dict, DictConfig))
    if expected is list or origin in (list, tuple):
        return isinstance(value, (list, tuple, ListConfig)) and (
            not args or all(_fits(v, args[0]) is not False for v in value))
    if expected is type(None):
        return value is None
    if expected is bool:
        return isinstance(value, bool)
    if expected is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if expected is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if expected is str:  # a name or a path; a number is a fine name
        return isinstance(value, (str, int, float)) and not isinstance(value, bool)
    return None


def _describe(expected) -> str:
    """A type or typing hint in words."""
    words = {int: "an integer", float: "a number", bool: "true or false", str: "a string", list: "a list",
             dict: "a mapping", type(None): "null"}
    if expected in words:
        return words[expected]
    origin, args = typing.get_origin(expected), typing.get_args(expected)
    if origin is typing.Union or type(expected).__name__ == "UnionType":
        literals = [repr(v) for a in args if typing.get_origin(a) is typing.Literal for v in typing.get_args(a)]
        others = [_describe(a) for a in args if typing.get_origin(a) is not typing.Literal
                  and (a in words or _fits(None, a) is not None)]
        return " or ".join(dict.fromkeys(([f"one of {', '.join(literals)}"] if literals else []) + others))
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin in (list, tuple):
        return f"a list of {_describe(args[0])}" if args else "a list"
    return getattr(expected, "__name__", str(expected))


@functools.lru_cache(maxsize=None)
def _trainer_hints() -> dict:
    import pytorch_lightning as pl

    return typing.get_type_hints(pl.Trainer.__init__)


def _check_value(key: str, node, source: str) -> None:
    """One value a layer sets: its type, then its choices. Interpolations are left to OmegaConf."""
    if node._is_interpolation():
        return
    value = node._value() if not isinstance(node, (DictConfig, ListConfig)) else node
    if isinstance(node, (DictConfig, ListConfig)) and node._is_none():
        value = None
    where = f"config key '{key}' (from {source}) is {value!r}"
    if key.startswith("trainer."):
        hint = _trainer_hints().get(key.split(".", 1)[1])
        if hint is not None and _fits(value, hint) is False:
            raise ConfigError(f"{where}; pytorch_lightning.Trainer takes {_describe(hint)}")
        return
    expected = _expected_type(key)
    if value is None:
        schema = _schema_key(key)
        if expected is not None and _default(schema) not in (None, "__missing__") and schema not in NULLABLE:
            raise ConfigError(f"{where}; it needs {_describe(expected)}")
        return
    if expected is not None and not _fits(value, expected):
        raise ConfigError(f"{where}; it must be {_describe(expected)}")
    choices = _match(CHOICES, _schema_key(key))
    if choices is not None:
        valid = tuple(choices())
        if value not in valid:
            quote = f" (quoted: {key}=\"'{value}'\")" if not isinstance(value, str) and str(value) in valid else ""
            raise ConfigError(f"{where}; valid: {', '.join(map(str, valid))}{quote}")


def check_values(update: DictConfig, source: str, prefix: str = "") -> None:
    """Check every value ``update`` sets (see KEY_TYPES and CHOICES); ConfigError names the
    key, the value, what is valid and ``source``. Keys under the open table nodes are the user's."""
    for key in update:
        full = f"{prefix}{key}"
        if any(full == n or full.startswith(n + ".") for n in OPEN_NODES if n != "trainer"):
            continue
        node = update._get_node(key)
        _check_value(full, node, source)
        if isinstance(node, DictConfig) and not node._is_none() and not node._is_interpolation():
            check_values(node, source, full + ".")


def check_extract_share(cfg: DictConfig) -> None:
    """``extract.index`` needs ``extract.count`` and lies in 0..count-1."""
    index, count = cfg.extract.index, cfg.extract.count
    if count is not None and count < 1:
        raise ConfigError(f"extract.count={count}: the number of processes sharing the extraction must be >= 1")
    if index is not None and count is None:
        raise ConfigError(f"extract.index={index} needs extract.count (how many processes share the shards): "
                          f"e.g. extract.index={index} extract.count=4")
    if index is not None and not 0 <= index < count:
        raise ConfigError(f"extract.index={index} must lie in 0..{count - 1} with extract.count={count}")
