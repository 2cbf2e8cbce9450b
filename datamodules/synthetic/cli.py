"""The command line every built-in generator shares: ``python -m datamodules.synthetic.NAME ROOT [--opt N]``,
its options read from the generator function's own keyword arguments and defaults."""
from __future__ import annotations

import argparse
import inspect
import sys
from typing import Callable

SKIP = ("root", "progress")  # not options: the positional ROOT, and progress (always on here)


def generator_main(generate: Callable, argv: list[str] | None = None, doc: str | None = None) -> None:
    """Parse ``argv`` into ``generate(root, **options)`` and print what it returns (the dataset directory).

    Each keyword argument of ``generate`` becomes ``--name-with-dashes`` (a boolean one also ``--no-...``)."""
    module = sys.modules[generate.__module__]
    module = module.__spec__.name if module.__spec__ else generate.__module__  # run as -m: "__main__"
    parser = argparse.ArgumentParser(prog=f"python -m {module}", description=(doc or "").strip().split("\n")[0])
    parser.add_argument("root", help="directory to write the dataset under (in its real layout)")
    for name, param in inspect.signature(generate).parameters.items():
        if name in SKIP or param.default is inspect.Parameter.empty:
            continue
        flag = f"--{name.replace('_', '-')}"
        if isinstance(param.default, bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=param.default)
        else:
            parser.add_argument(flag, type=type(param.default), default=param.default, help=f"default {param.default}")
    args = vars(parser.parse_args(argv))
    print(generate(args.pop("root"), **args))
