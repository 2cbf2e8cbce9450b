"""MiniScanNet generator: ScanNet raw-scan layout and formats, determinism, geometry, quirks."""
import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from datamodules.synthetic.miniscannet import (
    KITCHEN_CABINET, KITCHEN_COUNTER, PICTURE, STAMP, TSV_HEADER, WINDOW, build_scene, generate_miniscannet, main,
    scene_id)
from tests.conftest import shared_or_skip

NUM_TRAIN, NUM_VAL, FRAMES = 4, 2, 6
SCENES = [scene_id(i) for i in range(NUM_TRAIN + NUM_VAL)]
BAD_POSE = (SCENES[NUM_TRAIN], FRAMES // 2)  # the -inf pose: first val scene, middle frame


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return generate_miniscannet(tmp_path_factory.mktemp("miniscannet"), NUM_TRAIN, NUM_VAL, FRAMES, progress=False)


def read_matrix(path: Path) -> np.ndarray:
    return np.loadtxt(path).reshape(4, 4)


def read_labels(root: Path, scene: str) -> dict[int, np.ndarray]:
    with zipfile.ZipFile(root / "scans" / scene / f"{scene}_2d-label-filt.zip") as archive:
        return {int(Path(name).stem): np.array(Image.open(io.BytesIO(archive.read(name))))
                for name in archive.namelist() if name.endswith(".png")}


def axis_alignment(root: Path, scene: str) -> np.ndarray:
    for line in (root / "scans" / scene / f"{scene}.txt").read_text().splitlines():
        key, _, value = line.partition(" = ")
        if key == "axisAlignment":
            return np.array(value.split(), float).reshape(4, 4)
    raise AssertionError("no axisAlignment")


def back_project(root: Path, scene: str, frame: int, labels: np.ndarray):
    """(N, 3) world points and (N,) labels of colour pixels inside uniform 5x5 label patches with valid depth,
    the way a reader does it: colour pixel -> depth pixel by K_depth K_color^-1, read depth d (m),
    camera point d * K_color^-1 [u, v, 1], world point pose @ camera point."""
    scan = root / "scans" / scene
    K_color = read_matrix(scan / "intrinsic" / "intrinsic_color.txt")[:3, :3]
    K_depth = read_matrix(scan / "intrinsic" / "intrinsic_depth.txt")[:3, :3]
    pose = read_matrix(scan / "pose" / f"{frame}.txt")
    depth = np.array(Image.open(scan / "depth" / f"{frame}.png")).astype(float) / 1000
    padded = np.pad(labels, 2, mode="edge")
    uniform = np.ones(labels.shape, bool)
    for dy in range(5):
        for dx in range(5):
            uniform &= padded[dy:dy + labels.shape[0], dx:dx + labels.shape[1]] == labels
    v, u = np.nonzero(uniform)
    pixels = np.stack([u, v, np.ones_like(u)]).astype(float)                    # (3, N) colour pixels
    in_depth = np.rint(K_depth @ np.linalg.inv(K_color) @ pixels).astype(int)   # (3, N), last row 1
    inside = (in_depth[0] >= 0) & (in_depth[0] < depth.shape[1]) & (in_depth[1] >= 0) & (in_depth[1] < depth.shape[0])
    z = np.zeros(u.shape)
    z[inside] = depth[in_depth[1, inside], in_depth[0, inside]]
    valid = z > 0
    camera = (np.linalg.inv(K_color) @ pixels[:, valid]) * z[valid]               # (3, N)
    world = pose[:3, :3] @ camera + pose[:3, 3:]
    return world.T, labels[v[valid], u[valid]]


def test_layout_and_file_formats(root):
    assert (root / "scannetv2_train.txt").read_text() == "".join(s + "\n" for s in SCENES[:NUM_TRAIN])
    assert (root / "scannetv2_val.txt").read_text().split() == SCENES[NUM_TRAIN:]
    classes = [line.split("\t") for line in (root / "classes_SemVoxLabel-nyu40id.txt").read_text().splitlines()]
    assert len(classes) == 20 and classes[0] == ["1", "wall"] and classes[-1] == ["39", "otherfurniture"]
    for scene in SCENES:
        scan = root / "scans" / scene
        assert sorted(p.name for p in (scan / "color").iterdir()) == sorted(f"{i}.jpg" for i in range(FRAMES))
        color = Image.open(scan / "color" / "0.jpg")
        assert (color.format, color.mode, color.size) == ("JPEG", "RGB", (320, 240))
        depth = Image.open(scan / "depth" / "0.png")
        assert (depth.format, depth.size) == ("PNG", (160, 120))
        assert np.array(depth).dtype == np.uint16
        with zipfile.ZipFile(scan / f"{scene}_2d-label-filt.zip") as archive:
            pngs = sorted(n for n in archive.namelist() if n.endswith(".png"))
            assert pngs == sorted(f"label-filt/{i}.png" for i in range(FRAMES))
            label = Image.open(io.BytesIO(archive.read("label-filt/0.png")))
            assert (label.format, label.size) == ("PNG", (320, 240)) and np.array(label).dtype == np.uint16
        K_color = read_matrix(scan / "intrinsic" / "intrinsic_color.txt")
        K_depth = read_matrix(scan / "intrinsic" / "intrinsic_depth.txt")
        for K in (K_color, K_depth):
            assert K[0, 1] == K[1, 0] == K[0, 3] == K[1, 3] == 0 and np.array_equal(K[2:], np.eye(4)[2:])
        assert not np.allclose(K_color[0, 0] / 320, K_depth[0, 0] / 160)  # another field of view, as real
        assert not np.allclose(K_color[1, 2] / 240, K_depth[1, 2] / 120)  # and another centre
        pose = read_matrix(scan / "pose" / "0.txt")
        assert np.allclose(pose[:3, :3] @ pose[:3, :3].T, np.eye(3), atol=1e-4)
        assert np.array_equal(pose[3], [0, 0, 0, 1])


def test_label_tsv_is_crlf_with_the_real_columns(root):
    raw = (root / "scannetv2-labels.combined.tsv").read_bytes()
    assert raw.endswith(b"\r\n") and raw.count(b"\n") == raw.count(b"\r\n")
    rows = [line.split("\t") for line in raw.decode().split("\r\n")[:-1]]
    assert rows[0] == TSV_HEADER and rows[0][:5] == ["id", "raw_category", "category", "count", "nyu40id"]
    assert all(len(row) == 17 for row in rows)
    ids = {int(row[0]) for row in rows[1:]}
    for scene in SCENES:
        for frame, labels in read_labels(root, scene).items():
            assert set(np.unique(labels).tolist()) <= ids | {0}, (scene, frame)


def test_label_rows_are_the_real_ones(root):
    real_file = shared_or_skip() / "scannet" / "scannetv2-labels.combined.tsv"
    if not real_file.is_file():
        pytest.skip(f"{real_file} not found")
    real = {tuple(line.split("\t")[:2]): line for line in real_file.read_text().splitlines()}
    ours = (root / "scannetv2-labels.combined.tsv").read_text().splitlines()[1:]
    for line in ours:
        assert real[tuple(line.split("\t")[:2])] == line


def test_same_parameters_give_identical_files_and_a_stamp_skips_work(root, tmp_path, monkeypatch):
    again = generate_miniscannet(tmp_path, NUM_TRAIN, NUM_VAL, FRAMES, progress=False)
    files = sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    for name in files:
        assert (root / name).read_bytes() == (again / name).read_bytes(), name
    assert json.loads((again / STAMP).read_text())["seed"] == 0
    monkeypatch.setattr("datamodules.synthetic.miniscannet.write_scene", lambda *a, **k: pytest.fail("regenerated"))
    assert generate_miniscannet(again, NUM_TRAIN, NUM_VAL, FRAMES, progress=False) == again
    with pytest.raises(pytest.fail.Exception):  # other parameters do regenerate
        generate_miniscannet(again, NUM_TRAIN, NUM_VAL, FRAMES, seed=1, progress=False)


def test_refuses_to_write_over_a_real_scannet(tmp_path):
    (tmp_path / "scannetv2_train.txt").write_text("scene0000_00\n")
    with pytest.raises(FileExistsError, match="another ScanNet"):
        generate_miniscannet(tmp_path, 1, 1, 1, progress=False)


def test_one_pose_is_minus_inf_while_its_images_are_normal(root):
    scene, frame = BAD_POSE
    for s in SCENES:
        for f in range(FRAMES):
            pose = read_matrix(root / "scans" / s / "pose" / f"{f}.txt")
            assert np.isneginf(pose).all() if (s, f) == BAD_POSE else np.isfinite(pose).all(), (s, f)
    depth = np.array(Image.open(root / "scans" / scene / "depth" / f"{frame}.png"))
    assert (depth > 0).mean() > 0.5
    assert (read_labels(root, scene)[frame] > 0).mean() > 0.5
    assert np.array(Image.open(root / "scans" / scene / "color" / f"{frame}.jpg")).std() > 10


def test_depth_has_missing_pixels_but_mostly_values(root):
    depth = np.stack([np.array(Image.open(root / "scans" / s / "depth" / f"{f}.png"))
                      for s in SCENES for f in range(FRAMES)])
    assert 0.005 < (depth == 0).mean() < 0.3
    assert 400 <= depth[depth > 0].min() and depth.max() <= 4600  # mm, within the sensor's range


def test_back_projected_pixels_lie_on_the_surface_their_label_names(root):
    floor_z, on_part = [], []
    for index, scene in enumerate(SCENES):
        parts = build_scene(0, index, FRAMES).parts
        alignment = axis_alignment(root, scene)  # world -> the room's frame, where parts are given
        for frame, labels in read_labels(root, scene).items():
            if (scene, frame) == BAD_POSE:
                continue
            world, label = back_project(root, scene, frame, labels)
            room = world @ alignment[:3, :3].T + alignment[:3, 3]
            floor_z.append(world[label == 3, 2])
            found = np.zeros(len(room), bool)
            for part in parts:  # inside some part of the same label, grown by 6 cm for noise
                mine = label == part.label
                lo, hi = np.array(part.lo) - 0.06, np.array(part.hi) + 0.06
                found[mine] |= ((room[mine] >= lo) & (room[mine] <= hi)).all(axis=1)
            assert found.mean() > 0.97, (scene, frame, found.mean())
            on_part.append(found)
    floor_z = np.abs(np.concatenate(floor_z))
    assert len(floor_z) > 1000 and np.median(floor_z) < 0.02 and (floor_z < 0.08).mean() > 0.97
    assert len(np.concatenate(on_part)) > 10000


def test_position_tells_look_alike_classes_apart(root):
    heights: dict[int, list] = {PICTURE: [], WINDOW: [], KITCHEN_CABINET: [], KITCHEN_COUNTER: []}
    for scene in SCENES:
        for frame, labels in read_labels(root, scene).items():
            if (scene, frame) != BAD_POSE:
                world, label = back_project(root, scene, frame, labels)
                for k in heights:
                    heights[k].append(world[label == k, 2])
    z = {k: np.concatenate(v) for k, v in heights.items()}
    assert len(z[PICTURE]) > 200 and len(z[WINDOW]) > 200
    assert z[WINDOW].mean() > z[PICTURE].mean() + 0.4
    if len(z[KITCHEN_CABINET]) and len(z[KITCHEN_COUNTER]):
        assert z[KITCHEN_CABINET].min() > z[KITCHEN_COUNTER].max()


def test_main_writes_a_small_set(tmp_path, capsys):
    main([str(tmp_path), "--num-train-scenes", "1", "--num-val-scenes", "1", "--frames-per-scene", "2", "--width", "64", "--height", "48",
          "--depth-width", "32", "--depth-height", "24", "--no-invalid-pose"])
    assert capsys.readouterr().out.strip() == str(tmp_path)
    assert Image.open(tmp_path / "scans" / "scene0001_00" / "depth" / "1.png").size == (32, 24)
    assert np.isfinite(read_matrix(tmp_path / "scans" / "scene0001_00" / "pose" / "1.txt")).all()
