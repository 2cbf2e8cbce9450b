"""The task registry (bench/tasks): the only task dispatch. A task registered in one line runs
through the unchanged extract / train / eval entry points, with shard members of its own."""
from __future__ import annotations

import dataclasses
import functools
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bench import runs, shards
from bench.tasks import TASKS, get_task, segmentation
from bench.tasks.base import Task
from tests.conftest import tiny_config

REPO = Path(__file__).resolve().parents[1]


def test_registry_is_a_plain_dict_of_tasks_and_an_unknown_name_lists_the_valid_ones():
    assert list(TASKS) == ["segmentation", "retrieval", "multiview", "video", "zeroshot"]
    assert all(isinstance(t, Task) and t.name == n for n, t in TASKS.items())
    assert TASKS["segmentation"].trains and not TASKS["retrieval"].trains and TASKS["retrieval"].evaluate
    with pytest.raises(ValueError, match="task='audio' is unknown; valid: segmentation, retrieval, multiview, video, zeroshot"):
        get_task("audio")


def test_no_module_outside_the_registry_branches_on_the_task():
    branch = re.compile(r"cfg\.task\s*[!=]=|[\"']task[\"']\s*:\s*[\"'](segmentation|retrieval)[\"']")
    sources = [REPO / "train.py", REPO / "eval.py", *(REPO / "bench").rglob("*.py"),
               *(REPO / "datamodules").rglob("*.py"), *(REPO / "models").rglob("*.py")]
    found = [f"{p.relative_to(REPO)}:{i}" for p in sources if "tasks" not in p.parts
             for i, line in enumerate(p.read_text().splitlines(), 1) if branch.search(line)]
    assert not found


def test_shared_stages_import_no_task_and_a_lightning_module_no_extraction_stack():
    extract = ("import sys, bench.extraction, bench.tables, bench.shards;"
               "assert not {'bench.tasks', 'bench.retrieval.evaluate'} & set(sys.modules)")
    subprocess.run([sys.executable, "-c", extract], cwd=REPO, check=True)
    model = ("import sys, models.segmenter;"
             "heavy = {'timm', 'open_clip', 'segment_anything', 'bench.extraction', 'bench.backbones'} & set(sys.modules);"
             "assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", model], cwd=REPO, check=True)


# A toy task: segmentation's units, datamodule and model, plus a member of its own (a depth map,
# as a multi-view frame would carry) and a meta field (its scene). Registered in one line below.
TOY_MEMBERS = (*segmentation.MEMBERS, "depth.npy")


def toy_members(extractor, key: str, masks: np.ndarray, label: np.ndarray, pixels=None) -> tuple[dict, dict]:
    members, _ = segmentation.unit_members(extractor, key, masks, label, pixels)
    return {**members, "depth.npy": label.astype(np.float32) / 10}, {"scene": key[:6]}


TOY = dataclasses.replace(segmentation.TASK, name="toy", members=TOY_MEMBERS, unit_members=toy_members,
                          build_datamodule=functools.partial(runs.build_datamodule, members=TOY_MEMBERS))


def test_a_task_registered_in_one_line_runs_extract_train_and_eval_unchanged(tmp_path, monkeypatch):
    from bench.extract import extract
    from eval import evaluate
    from train import train

    monkeypatch.setitem(TASKS, "toy", TOY)  # the registry line
    cfg = tiny_config(tmp_path, "task=toy", "cell=region_linear/minivoc", "trainer.max_epochs=1")
    extract(cfg)
    trained = train(cfg)["region_linear/minivoc"]
    assert trained["task"] == "toy" and 0 < trained["miou"] <= 1
    assert evaluate(cfg)["region_linear/minivoc"]["miou"] == trained["miou"]

    from bench.config import cell_config
    split_dir = Path(cell_config(cfg, "region_linear/minivoc").extract.shard_dir) / "val"
    manifest = shards.load_manifest(split_dir)
    assert manifest["task"] == "toy" and "depth.npy" in manifest["members"]
    sample = shards.decode_sample(next(iter(shards.read_tar_samples([str(split_dir / "shard-000000.tar")]))),
                                  required=TOY_MEMBERS)
    assert np.array_equal(sample["depth"], sample["label"].astype(np.float32) / 10)
    assert sample["meta"]["scene"] == sample["key"][:6]

    monkeypatch.setitem(TASKS, "toy", segmentation.TASK)  # another task's shards in the same directory
    with pytest.raises(shards.ShardError, match="depth.npy.*not the.*of task segmentation: set extract.shard_dir"):
        extract(tiny_config(tmp_path, "cell=region_linear/minivoc"))
