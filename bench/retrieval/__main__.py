"""``python -m bench.retrieval experiment=table8_retrieval [key=value ...]``: extract, then evaluate."""
import logging
import sys

from bench.config import load_config
from bench.tasks.retrieval import run

logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
run(load_config(sys.argv[1:]))
