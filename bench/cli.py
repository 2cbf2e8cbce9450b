"""``--help`` for every entry point, answered before torch or Lightning is imported.

An entry point calls ``help_and_exit(__doc__, examples)`` first thing when run as a program: with
``-h``/``--help`` among its arguments it prints its docstring, the main config keys with their
defaults (read from bench/defaults.yaml with PyYAML, nothing else imported) and example commands,
then exits 0. Without them it returns and the program goes on.
"""
from __future__ import annotations

import sys
from pathlib import Path

DEFAULTS = Path(__file__).with_name("defaults.yaml")
# the keys a newcomer sets first, shown with their defaults
MAIN_KEYS = ("experiment", "cell", "task", "dataset", "regions.source", "backbone.name", "pooling.mode",
             "model.kind", "model.decoder", "model.preset", "weights", "trainer.max_epochs", "trainer.devices",
             "trainer.strategy", "data.batch_size", "paths.data_root", "paths.results_root", "paths.weights_root")


def wants_help(argv: list[str]) -> bool:
    return any(arg in ("-h", "--help", "help") for arg in argv)


def _defaults(keys: tuple[str, ...]) -> list[tuple[str, str]]:
    import yaml

    tree = yaml.safe_load(DEFAULTS.read_text())
    rows = []
    for key in keys:
        node = tree
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        rows.append((key, "null" if node is None else str(node)))
    return rows


def usage(doc: str, examples: list[str], keys: tuple[str, ...] = MAIN_KEYS) -> str:
    lines = [doc.strip(), "", "Main config keys (key=value on the command line; all of them: bench/defaults.yaml):"]
    width = max(len(k) for k in keys)
    lines += [f"  {key.ljust(width)}  {value}" for key, value in _defaults(keys)]
    lines += ["", "Examples:"] + [f"  {example}" for example in examples]
    return "\n".join(lines) + "\n"


def help_and_exit(doc: str | None, examples: list[str], argv: list[str] | None = None,
                  keys: tuple[str, ...] = MAIN_KEYS) -> None:
    """Print the usage and exit 0 if ``argv`` (default: sys.argv[1:]) asks for help."""
    if wants_help(sys.argv[1:] if argv is None else argv):
        sys.stdout.write(usage(doc or "", examples, keys))
        sys.exit(0)


def expected_errors() -> tuple[type, ...]:
    """Errors that say what to fix (a config key, a missing or damaged file): printed alone, exit 2.
    Anything else is a bug and keeps its traceback (so do these with REGIONBENCH_TRACEBACK=1)."""
    from bench.config_checks import ConfigError
    from bench.shards import ShardError
    from datamodules.voc import CorruptImageError

    return ConfigError, ShardError, FileNotFoundError, FileExistsError, CorruptImageError


def run(main, *args):
    """``main(*args)``; an expected error becomes its message on stderr and exit code 2."""
    import os

    try:
        return main(*args)
    except expected_errors() as err:
        if os.environ.get("REGIONBENCH_TRACEBACK"):
            raise
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


def print_paths(title: str, paths: list) -> None:
    """End a command with the paths it wrote."""
    existing = [str(p) for p in dict.fromkeys(paths) if p is not None and Path(p).exists()]
    if existing:
        print(f"\n{title}:")
        for path in existing:
            print(f"  {path}")


def handled_elsewhere(cfg, entry: str, argv: list[str]):
    """What an entry point returns instead of running here, or None to go on: ``print_config=true``
    prints each cell's resolved config (``bench.config.explain``); ``launcher.kind`` other than none
    submits the cells as jobs (``bench.launcher.submit``)."""
    if cfg.print_config:
        from bench.config import explain

        print(explain(cfg), end="")
        return {}
    if cfg.launcher.kind != "none":
        from bench.launcher import submit

        return submit(cfg, entry, argv)
    return None
