"""datamodules.scannet: both layouts on tiny synthetic scenes, and the real tsv/class list/pickle."""
from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from datamodules import scannet
from tests.conftest import shared_or_skip

TSV_HEADER = ["id", "raw_category", "category", "count", "nyu40id", "nyu40class"]
# ScanNet id -> nyu40: 1 wall -> 1, 2 chair -> 5, 7 shelf -> 10; id 9 repeats (8 door, then 3 cabinet):
# the last row wins; 13 -> 40 (not scored)
TSV_ROWS = [["1", "wall", "wall", "10", "1", "wall"], ["2", "chair", "chair", "5", "5", "chair"],
            ["9", "cabinet door", "cabinet door", "3", "8", "door"], ["7", "shelf", "shelf", "2", "10", "bookshelf"],
            ["9", "cabinet doors", "cabinet door", "3", "3", "cabinet"], ["13", "lamp", "lamp", "1", "40", "otherprop"]]
K_COLOR = [[20.0, 0, 7.5, 0], [0, 20, 5.5, 0], [0, 0, 1, 0], [0, 0, 0, 1]]    # 16x12 colour
K_DEPTH = [[10.0, 0, 3.5, 0], [0, 10, 2.5, 0], [0, 0, 1, 0], [0, 0, 0, 1]]    # 8x6 depth


def write_matrix(path: Path, matrix) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(" ".join(f"{x:f}" for x in row) for row in matrix) + "\n")


def png_bytes(array: np.ndarray) -> bytes:
    import io

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def write_frame(scene_dir: Path, name: str, index: int, color_hw=(12, 16)) -> None:
    rng = np.random.default_rng(index)
    for sub in ("color", "depth", "pose"):
        (scene_dir / sub).mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 255, (*color_hw, 3), dtype=np.uint8)).save(scene_dir / "color" / f"{name}.jpg")
    depth = np.full((6, 8), 1500 + index, dtype=np.uint16)
    depth[0, 0] = 0
    (scene_dir / "depth" / f"{name}.png").write_bytes(png_bytes(depth))
    pose = np.eye(4)
    pose[:3, 3] = [index, 0, 0]
    write_matrix(scene_dir / "pose" / f"{name}.txt", pose)


def scannet_label(index: int) -> np.ndarray:
    """(12, 16) uint16 ScanNet ids: rows of 1, 2, 9, 7, 13 and a never-mapped 500, and 0."""
    label = np.zeros((12, 16), dtype=np.uint16)
    for row, value in enumerate([1, 2, 9, 7, 13, 500]):
        label[row] = value
    label[-1, -1] = 40000 + index  # 16-bit, outside the tsv
    return label


def make_scannet_root(root: Path, frames=12, scenes=("scene0000_00", "scene0001_00"), extracted=()) -> Path:
    """ROOT/scans/<scene> as SensReader exports it; labels zipped, or extracted for ``extracted`` scenes."""
    with open(root / scannet.TSV_NAME, "w", newline="") as f:  # CRLF, like the real file
        f.write("\r\n".join("\t".join(row) for row in [TSV_HEADER, *TSV_ROWS]) + "\r\n")
    (root / "scannetv2_train.txt").write_text("\n".join(scenes) + "\n")
    for scene in scenes:
        scene_dir = root / "scans" / scene
        for i in range(frames):
            write_frame(scene_dir, str(i), i)
        write_matrix(scene_dir / "intrinsic" / "intrinsic_color.txt", K_COLOR)
        write_matrix(scene_dir / "intrinsic" / "intrinsic_depth.txt", K_DEPTH)
        if scene in extracted:
            (scene_dir / "label-filt").mkdir()
            for i in range(frames):
                (scene_dir / "label-filt" / f"{i}.png").write_bytes(png_bytes(scannet_label(i)))
        else:
            with zipfile.ZipFile(scene_dir / f"{scene}_2d-label-filt.zip", "w") as z:
                for i in range(frames):
                    z.writestr(f"label-filt/{i}.png", png_bytes(scannet_label(i)))
    return root


def make_25k_root(root: Path, frames=3, scene="scene0005_00", color_hw=(24, 32)) -> Path:
    """ROOT/scannet_frames_25k/<scene>: colour at twice the label resolution (12x16)."""
    (root / "scannetv2_val.txt").write_text(scene + "\n")
    scene_dir = root / "scannet_frames_25k" / scene
    (scene_dir / "label").mkdir(parents=True)
    for i in range(frames):
        name = f"{i * 100:06d}"
        write_frame(scene_dir, name, i, color_hw=color_hw)
        label = np.zeros((12, 16), dtype=np.uint8)
        label[:6] = 5   # chair -> train id 4
        label[6:] = 13  # nyu40 13 (pillow): not scored
        Image.fromarray(label).save(scene_dir / "label" / f"{name}.png")
    write_matrix(scene_dir / "intrinsics_color.txt", [[40.0, 0, 15.5, 0], [0, 40, 11.5, 0], [0, 0, 1, 0], [0, 0, 0, 1]])
    write_matrix(scene_dir / "intrinsics_depth.txt", K_DEPTH)
    return root


# ----------------------------------------------------------------------------- layout "scannet"
def test_frames_are_listed_in_numeric_order_with_zip_members(tmp_path):
    root = make_scannet_root(tmp_path)
    frames = scannet.iter_frames(root, "train", "scannet")
    assert len(frames) == 24
    assert [f.frame for f in frames[:12]] == [str(i) for i in range(12)]  # 10 and 11 after 9, not after 1
    first = frames[0]
    assert first.id == "scene0000_00_0" and first.scene == "scene0000_00"
    assert first.label == (root / "scans/scene0000_00/scene0000_00_2d-label-filt.zip", "label-filt/0.png")


def test_stride_and_an_evenly_spaced_cap(tmp_path):
    root = make_scannet_root(tmp_path, scenes=("scene0000_00",))
    assert [f.frame for f in scannet.iter_frames(root, "train", frame_stride=3)] == ["0", "3", "6", "9"]
    capped = scannet.iter_frames(root, "train", max_frames_per_scene=4)
    assert [f.frame for f in capped] == ["0", "4", "7", "11"]  # linspace(0, 11, 4) rounded


def test_load_frame_maps_scannet_ids_to_the_20_train_ids(tmp_path):
    root = make_scannet_root(tmp_path, scenes=("scene0000_00",))
    lookup = scannet.label_lookup(root, "scannet")
    sample = scannet.load_frame(scannet.iter_frames(root, "train")[3], lookup)
    assert sample["id"] == "scene0000_00_3"
    assert sample["rgb"].shape == (12, 16, 3) and sample["rgb"].dtype == np.uint8
    label = sample["label"]
    assert label.shape == (12, 16) and label.dtype == np.uint8
    # wall 0, chair 4, id 9 -> cabinet (last row) 2, shelf -> bookshelf 9, lamp (nyu40 40) and 500: ignore
    assert label[:6, 0].tolist() == [0, 4, 2, 9, 255, 255]
    assert (label[6:] == 255).all()  # ScanNet id 0 (unannotated) and 40003 (16-bit, not in the tsv)
    assert scannet._read_label(scannet.iter_frames(root, "train")[3].label)[-1, -1] == 40003  # read as 16-bit
    assert sample["depth"].dtype == np.float32 and sample["depth"].shape == (6, 8)
    assert sample["depth"][0, 0] == 0 and sample["depth"][1, 1] == pytest.approx(1.503)
    assert sample["pose"][0, 3] == 3 and sample["pose_valid"]
    np.testing.assert_array_equal(sample["K_color"], np.array(K_COLOR)[:3, :3])
    np.testing.assert_array_equal(sample["K_depth"], np.array(K_DEPTH)[:3, :3])


def test_an_extracted_label_filt_directory_is_read_like_the_zip(tmp_path):
    root = make_scannet_root(tmp_path, extracted=("scene0001_00",))
    frames = scannet.iter_frames(root, "train")
    zipped, extracted = frames[5], frames[12 + 5]
    assert extracted.label == root / "scans/scene0001_00/label-filt/5.png"
    lookup = scannet.label_lookup(root, "scannet")
    np.testing.assert_array_equal(scannet.load_frame(zipped, lookup)["label"],
                                  scannet.load_frame(extracted, lookup)["label"])


def test_a_non_finite_pose_is_flagged_not_an_error(tmp_path):
    root = make_scannet_root(tmp_path, scenes=("scene0000_00",))
    (root / "scans/scene0000_00/pose/2.txt").write_text("\n".join(["-inf -inf -inf -inf"] * 4) + "\n")
    sample = scannet.load_frame(scannet.iter_frames(root, "train")[2], scannet.label_lookup(root, "scannet"))
    assert not sample["pose_valid"] and np.isneginf(sample["pose"]).all()


def test_a_colour_frame_without_a_label_names_scene_and_frame(tmp_path):
    root = make_scannet_root(tmp_path, scenes=("scene0000_00",), frames=12)
    write_frame(root / "scans/scene0000_00", "12", 12)  # colour + depth + pose, no label member
    message = r"scene scene0000_00: 1 colour frame\(s\) have no label file \(e\.g\. frame 12"
    with pytest.raises(ValueError, match=message):
        scannet.iter_frames(root, "train")


def test_missing_or_extra_depth_and_pose_frames_are_errors(tmp_path):
    root = make_scannet_root(tmp_path, scenes=("scene0000_00",))
    (root / "scans/scene0000_00/depth/7.png").unlink()
    with pytest.raises(ValueError, match="scene scene0000_00: .* no depth file .*frame 7"):
        scannet.iter_frames(root, "train")
    (tmp_path / "b").mkdir()
    root = make_scannet_root(tmp_path / "b", scenes=("scene0000_00",))
    write_matrix(root / "scans/scene0000_00/pose/12.txt", np.eye(4))
    with pytest.raises(ValueError, match="scene scene0000_00: 12 colour but 13 pose frames; pose frame.s. 12"):
        scannet.iter_frames(root, "train")


def test_missing_intrinsics_and_missing_split_scene_are_errors(tmp_path):
    root = make_scannet_root(tmp_path, scenes=("scene0000_00",))
    (root / "scans/scene0000_00/intrinsic/intrinsic_depth.txt").unlink()
    with pytest.raises(FileNotFoundError, match="scene scene0000_00: intrinsics file .*intrinsic_depth.txt"):
        scannet.iter_frames(root, "train")
    (root / "scannetv2_train.txt").write_text("scene0000_00\nscene0099_00\n")
    write_matrix(root / "scans/scene0000_00/intrinsic/intrinsic_depth.txt", K_DEPTH)
    with pytest.raises(FileNotFoundError, match="scene scene0099_00 of split train is missing"):
        scannet.iter_frames(root, "train")
    with pytest.raises(ValueError, match="valid: train, val"):
        scannet.iter_frames(root, "test")
    with pytest.raises(ValueError, match="unknown ScanNet layout"):
        scannet.iter_frames(root, "train", "scannet_frames_100k")


# ----------------------------------------------------------------------------- layout "scannet_frames_25k"
def test_frames_25k_is_scored_at_label_resolution(tmp_path):
    root = make_25k_root(tmp_path)
    frames = scannet.iter_frames(root, "val", "scannet_frames_25k")
    assert [f.frame for f in frames] == ["000000", "000100", "000200"]
    assert frames[1].intrinsic_color == root / "scannet_frames_25k/scene0005_00/intrinsics_color.txt"
    lookup = scannet.label_lookup(root, "scannet_frames_25k")
    assert lookup.shape == (256,)
    sample = scannet.load_frame(frames[1], lookup)
    assert sample["rgb"].shape == (12, 16, 3)  # colour 24x32 resized to the label's 12x16
    assert (sample["label"][:6] == 4).all() and (sample["label"][6:] == 255).all()
    # K of the 32x24 colour (fx 40, cx 15.5) at half size, pixel centres kept: fx 20, cx (15.5 + .5) / 2 - .5
    np.testing.assert_allclose(sample["K_color"], [[20, 0, 7.5], [0, 20, 5.5], [0, 0, 1]])


def test_frames_25k_also_found_under_tasks(tmp_path):
    root = make_25k_root(tmp_path)
    (root / "tasks").mkdir()
    (root / "scannet_frames_25k").rename(root / "tasks" / "scannet_frames_25k")
    assert len(scannet.iter_frames(root, "val", "scannet_frames_25k")) == 3


# ----------------------------------------------------------------------------- label tables
def test_nyu40_table_sends_the_20_classes_to_0_19_and_the_rest_to_ignore():
    table = scannet.nyu40_to_train()
    assert [table[i] for i, _ in scannet.SCANNET20] == list(range(20))
    assert (np.delete(table, [i for i, _ in scannet.SCANNET20]) == 255).all()


def test_restricted_unpickler_reads_numpy_and_refuses_anything_else(tmp_path):
    good = {"a": np.arange(6.0).reshape(2, 3), "s": np.float64(2.5), "list": [np.eye(4)], "n": None}
    for protocol in (2, 4, 5):
        path = tmp_path / f"good{protocol}.pkl"
        path.write_bytes(pickle.dumps(good, protocol=protocol))
        loaded = scannet.load_numpy_pickle(path)
        np.testing.assert_array_equal(loaded["a"], good["a"])
        assert loaded["s"] == 2.5 and loaded["n"] is None
    bad = tmp_path / "bad.pkl"
    bad.write_bytes(pickle.dumps({"a": np.zeros(2), "p": Path("x")}))
    with pytest.raises(pickle.UnpicklingError, match=f"{bad}: refuses to load pathlib"):
        scannet.load_numpy_pickle(bad)
    bad.write_bytes(pickle.dumps(print))
    with pytest.raises(pickle.UnpicklingError, match="refuses to load builtins.print"):
        scannet.load_numpy_pickle(bad)


# ----------------------------------------------------------------------------- the real files
def test_real_tsv_maps_the_id_column_and_a_repeated_id_takes_its_last_row():
    tsv = shared_or_skip() / "scannet" / scannet.TSV_NAME
    mapping = scannet.read_label_mapping(tsv)
    assert mapping[1] == 1 and mapping[2] == 5  # wall, chair
    # what util.read_label_mapping's dict keeps: read the file's lines independently
    last = {}
    for line in tsv.read_bytes().decode().split("\r\n")[1:]:
        if line:
            fields = line.split("\t")
            last[int(fields[0])] = int(fields[4])
    assert mapping == last
    assert (mapping[107], mapping[188], mapping[385]) == (38, 38, 3)
    table = scannet.label_lookup(tsv.parent, "scannet")
    assert (table[107], table[188], table[385]) == (255, 255, 2)  # 385 -> cabinet, not door


def test_real_class_list_equals_the_built_in_constant():
    path = shared_or_skip() / "scannet" / scannet.CLASSES_NAME
    assert scannet.read_scored_classes(path) == scannet.SCANNET20
    assert scannet.read_scored_classes(path.parent / "absent.txt") == scannet.SCANNET20


def test_real_split_files():
    root = shared_or_skip() / "scannet"
    train, val = scannet.read_split(root, "train"), scannet.read_split(root, "val")
    assert (len(train), len(val)) == (1201, 312) and not set(train) & set(val)


def test_real_posed_images_pickle():
    root = shared_or_skip() / "scannet" / "mmdet3d_posed_images"
    frames = scannet.read_posed_images(root / "scannet_infos.pkl")
    assert [f.frame for f in frames] == ["00000", "00011", "00102"] and {f.scene for f in frames} == {"scene0000_00"}
    assert all(f.image_path.is_file() and f.pose_valid for f in frames)
    assert frames[0].K_color.shape == (3, 3) and frames[0].K_color[0, 0] == pytest.approx(1169.621094)
    pose = frames[0].pose
    assert pose.shape == (4, 4) and np.allclose(pose[3], [0, 0, 0, 1])
    assert np.allclose(pose[:3, :3] @ pose[:3, :3].T, np.eye(3), atol=1e-5)  # a rotation
    with Image.open(frames[0].image_path) as image:
        assert image.size == (1296, 968)
