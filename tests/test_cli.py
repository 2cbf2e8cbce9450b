"""Every entry point answers --help with its usage, its main keys and examples, exit 0, before torch
or Lightning is imported (each of those costs seconds), and writes nothing."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ENTRY_POINTS = {  # how to run it -> a phrase its help must show
    "train.py": "python train.py experiment=quickstart",
    "eval.py": "python eval.py leaderboard",
    "-m bench.extract": "python -m bench.extract experiment=quickstart",
    "-m bench.retrieval": "table8_retrieval",
    "-m bench.tools.visualize": "num_images=4",
    "-m bench.tools.search": "query index=INDEX",
    "-m bench.tools.random_weights": "Random-weight checkpoints",
    "-m datamodules.synthetic.minivoc": "--num-train",
}
HEAVY = ("torch", "pytorch_lightning", "timm", "open_clip")


@pytest.mark.parametrize("entry", sorted(ENTRY_POINTS))
def test_help_prints_usage_without_importing_torch_and_writes_nothing(entry, tmp_path):
    target = [str(REPO / entry)] if entry.endswith(".py") else entry.split()
    # run the entry point in a child that reports which heavy modules were loaded when it exited
    probe = ("import atexit, runpy, sys\n"
             f"atexit.register(lambda: print('LOADED', sorted(m for m in {HEAVY!r} if m in sys.modules)))\n"
             f"sys.argv = [{target[-1]!r}, '--help']\n"
             + (f"runpy.run_path({target[0]!r}, run_name='__main__')" if entry.endswith(".py")
                else f"runpy.run_module({target[-1]!r}, run_name='__main__', alter_sys=True)"))
    out = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                         env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr[-2000:]
    assert ENTRY_POINTS[entry] in out.stdout
    assert "LOADED []" in out.stdout, out.stdout[-300:]
    assert list(tmp_path.iterdir()) == []  # nothing written (random_weights once wrote ./--help/)


@pytest.mark.parametrize("args, message", [
    (["train.py", "experiment=no_such_table"], "experiment"),
    (["eval.py", "model.decoder=linaer"], "model.decoder"),
    (["-m", "bench.extract", "dataset=minivoc", "dataset.root=/nowhere", "dataset.generate=null"], "/nowhere"),
])
def test_an_expected_error_is_its_message_alone_with_exit_code_2(args, message, tmp_path):
    out = subprocess.run([sys.executable, *args, f"paths.data_root={tmp_path}"], cwd=REPO, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 2, out.stderr[-2000:]
    assert any(line.startswith("error: ") for line in out.stderr.splitlines()) and message in out.stderr
    assert "Traceback" not in out.stderr


def test_train_ends_with_the_paths_it_wrote(tiny_root, tmp_path, capsys):
    from tests.conftest import tiny_overrides
    from train import main

    main([*tiny_overrides(tiny_root), f"paths.results_root={tmp_path}", "experiment=quickstart",
          "cell=region_linear/minivoc", "trainer.max_epochs=1"])
    out = capsys.readouterr().out
    written = out[out.rindex("written:"):].splitlines()[1:]
    assert f"  {tmp_path / 'quickstart' / 'region_linear' / 'minivoc'}" in written
    assert f"  {tmp_path / 'quickstart' / 'table.md'}" in written


def test_print_config_names_the_layer_of_every_key_presets_included(capsys):
    from train import main

    assert main(["experiment=table6_decoders", "cell=sam_slic_mlp/voc", "trainer.devices=1", "print_config=true"]) == {}
    lines = dict(line.split(": ", 1) for line in capsys.readouterr().out.splitlines() if ": " in line)
    assert lines["model.lr"] == "0.0005  # table.cells.sam_slic_mlp/voc (model.preset=voc_mlp)"
    assert lines["model.decoder"] == "mlp  # table.cells.sam_slic_mlp/voc (model.preset=voc_mlp)"  # last to set it
    assert lines["regions.source"] == "sam_slic  # experiments/table6_decoders.yaml"
    assert lines["dataset.name"] == "voc  # table.columns.voc"
    assert lines["trainer.devices"] == "1  # bench/defaults.yaml"  # the command line set what the default was
    assert lines["seed"] == "0  # bench/defaults.yaml"
