"""Multi-view segmentation (Table 7): MiniScanNet through extraction, the three model kinds, scene
context, invalid poses, and 2-rank DDP evaluation equal to one rank."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from bench import shards
from bench.config import cell_config, load_config
from bench.tasks.multiview import plan, scene_of
from datamodules.region_shards import collate_groups, count_groups, frame_groups
from models.multiview import MultiviewSegmenter, fourier_features
from tests.conftest import eval_on_one_and_two_ranks

# 2 train + 2 val scenes of 4 frames at 96x72 (depth 48x36); each scene its own shard (4 per shard)
TINY_SCANNET = ["dataset.generate.num_train_scenes=2", "dataset.generate.num_val_scenes=2",
                "dataset.generate.frames_per_scene=4", "dataset.generate.width=96", "dataset.generate.height=72",
                "dataset.generate.depth_width=48", "dataset.generate.depth_height=36",
                "regions.params.slic.num_components=20", "extract.samples_per_shard=4", "extract.progress=false",
                "trainer.max_epochs=2", "trainer.check_val_every_n_epoch=1", "trainer.enable_progress_bar=false",
                "logger.kind=none", "model.decoder_params.transformer.layers=1"]


def overrides(root: Path) -> list[str]:
    return ["experiment=table7_multiview", *TINY_SCANNET, f"paths.data_root={root / 'data'}",
            f"paths.results_root={root / 'results'}"]


def config(root: Path, *extra: str):
    return load_config([*overrides(root), *extra])


@pytest.fixture(scope="module")
def scannet_root(tmp_path_factory) -> Path:
    from bench.extract import extract

    root = tmp_path_factory.mktemp("multiview")
    extract(config(root, "cell=linear/miniscannet"))  # every row reads the same shards
    return root


def shard_dir(root: Path, split: str) -> Path:
    return Path(cell_config(config(root), "linear/miniscannet").extract.shard_dir) / split


# ----------------------------------------------------------------------------- pure parts
class Frame:
    def __init__(self, scene: str, frame: int):
        self.scene, self.id = scene, f"{scene}_{frame}"


def test_plan_keeps_every_scene_in_one_shard():
    frames = [Frame("scene0000_00", i) for i in range(5)] + [Frame("scene0001_00", i) for i in range(2)] \
        + [Frame("scene0002_00", i) for i in range(3)]
    assert plan(frames, 4) == [[f.id for f in frames[:5]], [f.id for f in frames[5:]]]
    assert plan(frames, 1) == [[f.id for f in frames[:5]], [f.id for f in frames[5:7]], [f.id for f in frames[7:]]]
    assert scene_of("scene0002_00_17") == "scene0002_00"


def test_frame_groups_split_long_scenes_into_interleaved_groups():
    samples = [{"key": f"scene0000_00_{i}"} for i in range(7)] + [{"key": "scene0001_00_0"}]
    groups = list(frame_groups(iter(samples), scene_of, 3))
    assert [[s["key"][-1] for s in g] for g in groups] == [["0", "3", "6"], ["1", "4"], ["2", "5"], ["0"]]
    assert count_groups([s["key"] for s in samples], scene_of, 3) == 4
    assert count_groups([s["key"] for s in samples], scene_of, None) == 2


def test_fourier_features_and_zero_initial_embeddings():
    x = torch.tensor([[0.25, 0.5]])
    f = fourier_features(x, bands=2, scale=1.0)  # x, sin(pi x), sin(2 pi x), cos(pi x), cos(2 pi x) per coordinate
    expected = [0.25, 0.5, np.sin(np.pi / 4), np.sin(np.pi / 2), np.sin(np.pi / 2), np.sin(np.pi),
                np.cos(np.pi / 4), np.cos(np.pi / 2), np.cos(np.pi / 2), np.cos(np.pi)]
    assert torch.allclose(f[0], torch.tensor(expected, dtype=torch.float32), atol=1e-6)
    plain = MultiviewSegmenter(in_dim=4, num_classes=3)
    embedded = MultiviewSegmenter(in_dim=4, num_classes=3, pos2d=True, pos3d=True)
    embedded.decoder.load_state_dict(plain.decoder.state_dict())
    batch = {"feats": torch.randn(5, 4), "pos2d": torch.rand(5, 6), "pos3d": torch.randn(5, 6),
             "valid3d": torch.tensor([True, False, True, True, False]), "image_index": torch.zeros(5, dtype=torch.long)}
    assert torch.equal(embedded.tokens(batch), plain.tokens(batch))  # an untrained embedding changes nothing
    with torch.no_grad():
        embedded.embed3d.proj.bias.fill_(1.0)
    moved = embedded.tokens(batch) - plain.tokens(batch)
    assert torch.allclose(moved[batch["valid3d"]], torch.ones(3, 4)) and torch.all(moved[~batch["valid3d"]] == 0.0)


# ----------------------------------------------------------------------------- MiniScanNet end to end
def test_shards_hold_positions_and_name_the_frame_with_an_invalid_pose(scannet_root):
    manifest = shards.load_manifest(shard_dir(scannet_root, "val"))
    assert manifest["task"] == "multiview"
    assert {"pos2d.npy", "pos3d.npy", "valid3d.npy"} <= set(manifest["members"])
    # the generator writes -inf into frame frames//2 of the first val scene (ScanNet's known fault)
    assert manifest["notes"] == {"invalid_pose": {"count": 1, "ids": ["scene0002_00_2"]}}
    for entry in manifest["shards"]:  # whole scenes per shard
        assert len({scene_of(k) for k in entry["keys"]}) == 1
    samples, _ = shards.read_split(shard_dir(scannet_root, "val"))
    for sample in samples:
        assert sample["pos2d"].shape == (len(sample["feats"]), 6) and sample["pos2d"].min() >= 0
        assert sample["pos2d"].max() <= 1
        assert sample["meta"]["scene"] == scene_of(sample["key"])
        if sample["key"] == "scene0002_00_2":
            assert not sample["meta"]["pose_valid"] and not sample["valid3d"].any()
            assert not sample["pos3d"].any()
        else:
            assert sample["meta"]["pose_valid"] and sample["valid3d"].mean() > 0.9
            assert np.abs(sample["pos3d"][:, :3]).max() < 10  # centred on the scene: within a room


def _scene_batch(root: Path, scene: str) -> dict:
    samples, _ = shards.read_split(shard_dir(root, "val"))
    group = [s for s in samples if scene_of(s["key"]) == scene]
    return collate_groups([group], region_fields=("pos2d", "pos3d", "valid3d"))


@pytest.mark.parametrize("context, depends", [("scene", True), ("image", False)])
def test_a_frames_predictions_depend_on_other_frames_only_with_scene_context(scannet_root, context, depends):
    torch.manual_seed(0)
    model = MultiviewSegmenter(in_dim=53, num_classes=20, decoder="transformer", pos2d=True, pos3d=True,
                               context=context, decoder_params={"transformer": {"width": 64, "dropout": 0.0}})
    model.eval()
    batch = _scene_batch(scannet_root, "scene0003_00")
    assert batch["image_index"].max() == 3 and batch["group_index"].max() == 0
    first = batch["image_index"] == 0
    with torch.no_grad():
        before = model.decoder(model.tokens(batch), model.groups(batch))[first]
        batch["feats"][batch["image_index"] == 1] += 5.0  # another frame of the same scene changes
        after = model.decoder(model.tokens(batch), model.groups(batch))[first]
    assert (not torch.allclose(before, after)) == depends


@pytest.mark.parametrize("row", ["linear_2d_3d", "image_transformer_2d_3d", "scene_transformer_2d_3d"])
def test_each_row_kind_trains_and_eval_reproduces_its_metrics(scannet_root, row):
    from eval import evaluate
    from train import train

    cell = f"{row}/miniscannet"
    trained = train(config(scannet_root, f"cell={cell}"))[cell]
    assert trained["task"] == "multiview" and 0 < trained["miou"] <= 1
    assert trained["num_images"] == 8  # every val frame scored once, the invalid-pose one included
    assert trained["notes"]["val"]["invalid_pose"] == {"count": 1, "ids": ["scene0002_00_2"]}
    assert evaluate(config(scannet_root, f"cell={cell}", "pictures=2"))[cell]["confusion"] == trained["confusion"]
    picture = scannet_root / "results" / "table7_multiview" / row / "miniscannet" / "scene" / "scene0002_00.png"
    from PIL import Image
    width, height = Image.open(picture).size  # 2 frames x 4 panels of 96x72, and the top-down view
    assert width > 4 * 96 and height > 2 * 72


def test_two_rank_ddp_evaluation_of_the_scene_transformer_equals_one_rank(scannet_root, tmp_path):
    from train import train

    cell = "scene_transformer_2d_3d/miniscannet"
    train(config(scannet_root, f"cell={cell}"))
    results = eval_on_one_and_two_ranks(overrides(scannet_root), scannet_root / "results", cell, tmp_path)
    assert results[2]["eval"]["world_size"] == 2
    assert results[2]["confusion"] == results[1]["confusion"] and results[2]["num_images"] == 8


def test_a_frame_without_a_label_is_an_error_naming_scene_and_frame(scannet_root, tmp_path):
    from datamodules import scannet

    root = tmp_path / "copy"
    shutil.copytree(scannet_root / "data" / "miniscannet", root)
    scene = root / "scans" / "scene0000_00"
    (scene / "color" / "4.jpg").write_bytes((scene / "color" / "3.jpg").read_bytes())  # a frame too many
    with pytest.raises(ValueError, match="scene0000_00.*depth.*4"):
        scannet.iter_frames(root, "train", "scannet")
    for what in ("depth", "pose"):
        shutil.copy(scene / what / f"3.{'png' if what == 'depth' else 'txt'}",
                    scene / what / f"4.{'png' if what == 'depth' else 'txt'}")
    with pytest.raises(ValueError, match="scene0000_00.*no label file.*frame 4"):
        scannet.iter_frames(root, "train", "scannet")
