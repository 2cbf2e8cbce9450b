"""MiniKinetics generator: Kinetics-400 layout and csv format, decodable mp4s, determinism, and time-defined classes."""
import json
import re
from pathlib import Path

import numpy as np
import pytest

from datamodules.synthetic import minikinetics
from datamodules.synthetic.minikinetics import (
    CLASSES, CSV_HEADER, FRAME_CLASSES, STAMP, TIME_PAIRS, encode_clip, generate_minikinetics, main, read_annotations,
    render_clip)
from tests.conftest import shared_or_skip

av = pytest.importorskip("av")

NUM_TRAIN, NUM_VAL, FRAMES, FPS, WIDTH, HEIGHT, SEED = 2, 1, 8, 15, 64, 48, 3
SMALL = dict(num_train=NUM_TRAIN, num_val=NUM_VAL, frames=FRAMES, fps=FPS, width=WIDTH, height=HEIGHT, seed=SEED,
             progress=False)


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return generate_minikinetics(tmp_path_factory.mktemp("minikinetics"), **SMALL)


def decode(path: Path) -> np.ndarray:
    """(T, H, W, 3) uint8 RGB frames of an mp4."""
    with av.open(str(path)) as container:
        return np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])


def test_layout_and_annotation_csvs(root):
    assert sorted(p.name for p in root.iterdir()) == [STAMP, "annotations", "label_map.txt", "train", "val"]
    for split, per_class, first in (("train", NUM_TRAIN, 0), ("val", NUM_VAL, len(CLASSES) * NUM_TRAIN)):
        path = root / "annotations" / f"kinetics-400_{split}.csv"
        lines = path.read_text().splitlines()
        assert lines[0] == ",".join(CSV_HEADER) == "label,youtube_id,time_start,time_end,split,is_cc"
        for line in lines[1:]:  # quoted exactly when the label has a space, like the real file
            label = line.rsplit(",", 5)[0]
            assert label.startswith('"') == (" " in label), line
        rows = read_annotations(path)
        assert sorted(row["label"] for row in rows) == sorted(CLASSES * per_class)
        assert [row["label"] for row in rows] == sorted(row["label"] for row in rows)  # grouped by label
        assert {row["split"] for row in rows} == {split}
        assert {row["is_cc"] for row in rows} <= {0, 1}
        for row in rows:
            assert re.fullmatch(r"[A-Za-z0-9_-]{11}", row["youtube_id"]), row
            assert row["time_end"] - row["time_start"] == 10 and row["time_start"] >= 0
        names = [f"{r['youtube_id']}_{r['time_start']:06d}_{r['time_end']:06d}.mp4" for r in rows]
        assert {p.name for p in (root / split).iterdir()} == set(names) and len(set(names)) == len(rows)
        # the files hold the rendered clips, listed under their labels (clip i has class i % 12)
        for index in (first, first + 5):
            frames, label = render_clip(SEED, index, None, FRAMES, WIDTH, HEIGHT)
            matches = [row["label"] for row, name in zip(rows, names)
                       if np.abs(decode(root / split / name).astype(float) - frames).mean() < 8]
            assert matches == [CLASSES[label]], (split, index)


@pytest.mark.fixtures
def test_csv_format_matches_the_real_kinetics_400_file(root):
    real = (shared_or_skip() / "kinetics" / "kinetics-400_val.csv").read_text().splitlines()
    ours = (root / "annotations" / "kinetics-400_val.csv").read_text().splitlines()
    assert ours[0] == real[0]
    for lines in (real, ours):
        for line in lines[1:]:
            label = line.rsplit(",", 5)[0]
            assert label.startswith('"') == (" " in label), line
    real_rows = read_annotations(shared_or_skip() / "kinetics" / "kinetics-400_val.csv")
    assert set(real_rows[0]) == set(read_annotations(root / "annotations" / "kinetics-400_val.csv")[0])


def test_label_map_lists_the_classes_in_id_order(root):
    assert (root / "label_map.txt").read_text() == "".join(name + "\n" for name in CLASSES)
    assert list(CLASSES) == sorted(CLASSES) and len(CLASSES) == 12  # alphabetical, like label_map_k400.txt
    paired = [name for pair in TIME_PAIRS for name in pair]
    assert sorted(paired + list(FRAME_CLASSES)) == sorted(CLASSES)


def test_clips_decode_to_the_expected_frames(root):
    path = next((root / "val").iterdir())
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert (stream.codec_context.name, stream.codec_context.pix_fmt) in {("h264", "yuv420p"), ("mpeg4", "yuv420p")}
        assert stream.average_rate == FPS
    for path in sorted((root / "train").iterdir())[:4]:
        assert decode(path).shape == (FRAMES, HEIGHT, WIDTH, 3)


def test_same_parameters_give_identical_clips_and_a_stamp_skips_work(root, tmp_path):
    again = generate_minikinetics(tmp_path / "again", **SMALL)
    for split in ("train", "val"):
        names = sorted(p.name for p in (root / split).iterdir())
        assert names == sorted(p.name for p in (again / split).iterdir())
        for name in names[:3]:
            assert np.array_equal(decode(root / split / name), decode(again / split / name))
            # the same PyAV/FFmpeg/x264 build also writes the same bytes
            assert (root / split / name).read_bytes() == (again / split / name).read_bytes()
    for name in ("annotations/kinetics-400_train.csv", "annotations/kinetics-400_val.csv", "label_map.txt", STAMP):
        assert (root / name).read_bytes() == (again / name).read_bytes()
    victim = next((again / "val").iterdir())
    victim.unlink()
    generate_minikinetics(again, **SMALL)
    assert not victim.exists()  # same parameters: returned without drawing anything
    generate_minikinetics(again, **{**SMALL, "seed": SEED + 1})
    assert json.loads((again / STAMP).read_text())["seed"] == SEED + 1
    assert not victim.exists() and len(list((again / "val").iterdir())) == len(CLASSES) * NUM_VAL


def test_an_unfinished_run_is_redone(tmp_path):
    small = {**SMALL, "num_train": 1}
    generate_minikinetics(tmp_path, **small)
    stamp = json.loads((tmp_path / STAMP).read_text())
    (tmp_path / STAMP).write_text(json.dumps({**stamp, "complete": False}))
    victim = next((tmp_path / "train").iterdir())
    victim.unlink()
    generate_minikinetics(tmp_path, **small)
    assert victim.exists() and json.loads((tmp_path / STAMP).read_text()) == stamp


def test_refuses_to_write_over_a_real_kinetics_and_bad_sizes(tmp_path):
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "kinetics-400_val.csv").write_text("label,youtube_id,time_start,time_end,split\n")
    with pytest.raises(FileExistsError, match="another Kinetics"):
        generate_minikinetics(tmp_path, **SMALL)
    assert not (tmp_path / "train").exists()
    with pytest.raises(ValueError, match="even"):
        generate_minikinetics(tmp_path / "odd", **{**SMALL, "width": 65})


@pytest.mark.parametrize("forward, backward", TIME_PAIRS)
def test_a_time_pair_differs_only_in_frame_order(forward, backward):
    """Drawn from one seed as either class of a pair, a clip is the other played backwards: the
    frame average (or any statistic of the unordered frames) is exactly the same."""
    a, _ = render_clip(SEED, 7, CLASSES.index(forward), FRAMES, WIDTH, HEIGHT)
    b, _ = render_clip(SEED, 7, CLASSES.index(backward), FRAMES, WIDTH, HEIGHT)
    assert np.array_equal(a[::-1], b)
    assert np.array_equal(a.mean(0), b.mean(0))
    assert np.abs(a[0].astype(float) - b[0]).mean() > 1  # yet the clips differ: the order carries the class
    other, _ = render_clip(SEED, 8, CLASSES.index(forward), FRAMES, WIDTH, HEIGHT)
    assert np.abs(a.mean(0) - other.mean(0)).mean() > 10  # and another seed's average is far away


def test_frame_averages_of_encoded_twins_agree_up_to_compression(tmp_path):
    right, left = CLASSES.index("moving right"), CLASSES.index("moving left")
    averages = {}
    for label in (right, left):
        path = tmp_path / f"{label}.mp4"
        path.write_bytes(encode_clip(render_clip(SEED, 0, label, FRAMES, WIDTH, HEIGHT)[0], FPS))
        averages[label] = decode(path).astype(float).mean(0)
    assert np.abs(averages[right] - averages[left]).mean() < 1.5


def test_the_motion_is_what_the_label_says():
    """The x-centroid of what moves (|frame - temporal median|) goes right for "moving right"."""
    def slope(clip):
        moving = np.abs(clip.astype(np.float32) - np.median(clip, 0)).sum((1, 3))  # (T, W)
        centre = (moving * np.arange(clip.shape[2])).sum(1) / moving.sum(1)
        return np.polyfit(np.arange(len(centre)), centre, 1)[0]

    for index in range(4):
        assert slope(render_clip(SEED, index, CLASSES.index("moving right"))[0]) > 0
        assert slope(render_clip(SEED, index, CLASSES.index("moving left"))[0]) < 0


def test_command_line(tmp_path, capsys):
    main([str(tmp_path), "--num-train", "1", "--num-val", "1", "--frames", "4", "--width", "64", "--height", "48"])
    assert capsys.readouterr().out.strip() == str(tmp_path)
    stamp = json.loads((tmp_path / STAMP).read_text())
    assert (stamp["num_train"], stamp["frames"], stamp["width"], stamp["height"]) == (1, 4, 64, 48)
    assert decode(next((tmp_path / "train").iterdir())).shape == (4, 48, 64, 3)


def test_mpeg4_fallback_when_pyav_has_no_libx264(tmp_path, monkeypatch):
    monkeypatch.setattr(minikinetics, "video_codec", lambda: "mpeg4")
    root = generate_minikinetics(tmp_path, **{**SMALL, "num_train": 1, "frames": 4})
    assert json.loads((root / STAMP).read_text())["codec"] == "mpeg4"
    path = next((root / "train").iterdir())
    with av.open(str(path)) as container:
        assert container.streams.video[0].codec_context.name == "mpeg4"
    assert decode(path).shape == (4, HEIGHT, WIDTH, 3)
