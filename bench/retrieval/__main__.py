"""``python -m bench.retrieval experiment=table8_retrieval [key=value ...]``: extract, then evaluate."""
import logging
import sys

from bench.cli import help_and_exit

help_and_exit(__doc__, ["python -m bench.retrieval experiment=table8_retrieval cell='*/minicoco'"])

from bench.config import load_config  # noqa: E402  (after --help: it loads the task stack)
from bench.tasks.retrieval import run  # noqa: E402

logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
run(load_config(sys.argv[1:]))
