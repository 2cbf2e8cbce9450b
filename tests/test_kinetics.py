"""Kinetics-400: csv quirks, layouts, class ids, exact frame sampling, the crash-proof pre-scan."""
from __future__ import annotations

import json
import os

import av
import numpy as np
import pytest

from benchmarks.video_frames import write_clip
from datamodules import kinetics as K
from tests.conftest import shared_or_skip

HEADER = "label,youtube_id,time_start,time_end,split,is_cc\n"
ROWS = ['"air drumming",--nQbRBEz2s,104,114,val,0', 'abseiling,0wR5jVB-WPk,417,427,val,1',
        '"massaging person\'s head",a_b-c_d-e_f,0,10,val,0', '"hurling (sport)",x1,5,15,val,0']


def kinetics_root(tmp_path, rows=ROWS, labels=("abseiling", "air drumming", "hurling (sport)",
                                                 "massaging person's head")):
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "kinetics-400_val.csv").write_text(HEADER + "\n".join(rows) + "\n")
    (tmp_path / "annotations" / "label_map_k400.txt").write_text("\n".join(labels) + "\n")
    return tmp_path


# ----------------------------------------------------------------------------- annotations
@pytest.mark.fixtures
def test_k400_csv_has_quoted_labels_and_is_cc():
    rows = K.read_annotations(shared_or_skip() / "kinetics" / "kinetics-400_val.csv")
    assert len(rows) == 19906 and len({r["label"] for r in rows}) == 400
    assert rows[0] == {"label": "abseiling", "youtube_id": "0wR5jVB-WPk", "time_start": 417, "time_end": 427,
                       "split": "val", "is_cc": False}
    assert {"air drumming", "hurling (sport)", "massaging person's head"} <= {r["label"] for r in rows}
    assert sum(r["is_cc"] for r in rows) == 519


@pytest.mark.fixtures
def test_k600_csv_has_no_is_cc():
    rows = K.read_annotations(shared_or_skip() / "kinetics" / "kinetics-600_val.csv")
    assert len(rows) == 30000 and all(r["is_cc"] is None for r in rows)
    assert rows[0]["youtube_id"] == "yq_M1PMw2hY" and rows[0]["time_end"] == 48


@pytest.mark.fixtures
def test_label_map_gives_400_classes_in_file_order():
    path = shared_or_skip() / "kinetics" / "label_map_k400.txt"
    names = K.read_label_map(path)
    assert len(names) == 400 and names[:2] == ["abseiling", "air drumming"] and names[-1] == "zumba"
    assert names == [line for line in path.read_text().splitlines() if line]
    labels = {r["label"] for r in K.read_annotations(path.parent / "kinetics-400_val.csv")}
    assert set(names) == labels  # (the mmaction2 map is also the sorted label set)


def test_class_ids_follow_the_label_map_order_not_sorting(tmp_path):
    root = kinetics_root(tmp_path, labels=("massaging person's head", "hurling (sport)", "air drumming",
                                           "abseiling"))
    (root / "val").mkdir()
    found, missing = K.list_clips(root, "val")
    assert not found and [c.label_id for c in missing] == [2, 3, 0, 1]


def test_class_ids_fall_back_to_the_sorted_train_labels(tmp_path):
    root = kinetics_root(tmp_path)
    (root / "annotations" / "label_map_k400.txt").unlink()
    with pytest.raises(FileNotFoundError, match="label_map_k400.txt or kinetics-400_train.csv"):
        K.class_names(root)
    train = ['zumba,a,0,10,train,0', '"air drumming",b,0,10,train,0', 'abseiling,c,0,10,train,0']
    (root / "kinetics-400_train.csv").write_text(HEADER + "\n".join(train) + "\n")
    assert K.class_names(root) == ["abseiling", "air drumming", "zumba"]


def test_clip_ids_keep_dashes_and_underscores_and_refuse_dots():
    assert K.clip_id("a_b-c_d-e_f", 0, 10) == "a_b-c_d-e_f_000000_000010"
    with pytest.raises(ValueError, match="shard keys"):
        K.clip_id("a.b", 0, 10)


def test_a_label_outside_the_map_is_an_error(tmp_path):
    root = kinetics_root(tmp_path, labels=("abseiling",))
    (root / "val").mkdir()
    with pytest.raises(ValueError, match="not in the label map"):
        K.list_clips(root, "val")


# ----------------------------------------------------------------------------- layouts
def test_flat_layout_lists_found_and_missing_in_csv_order(tmp_path):
    root = kinetics_root(tmp_path)
    (root / "val").mkdir()
    for name in ("--nQbRBEz2s_000104_000114.mp4", "a_b-c_d-e_f_000000_000010.mkv", "x1_000005_000015.mp4"):
        (root / "val" / name).write_bytes(b"x")
    (root / "val" / "x1_000005_000015.webm").write_bytes(b"x")  # .mp4 wins
    found, missing = K.list_clips(root, "val")
    assert [c.id for c in found] == ["--nQbRBEz2s_000104_000114", "a_b-c_d-e_f_000000_000010", "x1_000005_000015"]
    assert [c.path.name for c in found][1:] == ["a_b-c_d-e_f_000000_000010.mkv", "x1_000005_000015.mp4"]
    assert [(c.id, c.label, c.label_id, c.split) for c in missing] == [("0wR5jVB-WPk_000417_000427", "abseiling", 0,
                                                                        "val")]
    assert found[0].label == "air drumming" and found[0].label_id == 1


def test_label_folder_layout_accepts_csv_spelling_and_underscores(tmp_path):
    root = kinetics_root(tmp_path)
    (root / "val" / "air drumming").mkdir(parents=True)
    (root / "val" / "massaging_person's_head").mkdir()
    (root / "val" / "hurling (sport)").mkdir()
    (root / "val" / "air drumming" / "--nQbRBEz2s_000104_000114.mp4").write_bytes(b"x")
    (root / "val" / "massaging_person's_head" / "a_b-c_d-e_f_000000_000010.mp4").write_bytes(b"x")
    assert K.detect_layout(root, "val") == "by_label"
    found, missing = K.list_clips(root, "val")
    assert [c.path.parent.name for c in found] == ["air drumming", "massaging_person's_head"]
    assert [c.id for c in missing] == ["0wR5jVB-WPk_000417_000427", "x1_000005_000015"]
    found_flat, missing_flat = K.list_clips(root, "val", layout="flat")  # the wrong layout finds nothing
    assert not found_flat and len(missing_flat) == 4


def test_annotations_at_the_root_are_the_fallback(tmp_path):
    root = kinetics_root(tmp_path)
    (root / "annotations" / "kinetics-400_val.csv").rename(root / "kinetics-400_val.csv")
    (root / "val").mkdir()
    assert len(K.list_clips(root, "val")[1]) == 4
    with pytest.raises(FileNotFoundError, match="kinetics-400_train.csv"):
        K.annotation_path(root, "train")


# ----------------------------------------------------------------------------- exact frames
def assert_same(path, num_frames, short_side=None):
    frames, pts = K.sample_frames(path, num_frames, short_side)
    ref_frames, ref_pts = K.reference_frames(path, num_frames, short_side)
    assert frames.dtype == np.uint8 and frames.shape[0] == num_frames and frames.shape[-1] == 3
    assert np.array_equal(pts, ref_pts) and np.array_equal(frames, ref_frames)
    return frames, pts


@pytest.mark.fixtures
@pytest.mark.parametrize("name", ["demo.mp4", "test.mp4"])
def test_fixture_clips_sample_exactly_the_reference_frames(name):
    path = shared_or_skip() / "kinetics" / "videos" / name
    frames, pts = assert_same(path, 8)
    assert frames.shape == (8, 256, 340, 3) and np.all(np.diff(pts) > 0)


@pytest.fixture(scope="module")
def long_gop(tmp_path_factory):
    """100 frames at 25 fps, keyframes every 60 frames, 2 B-frames: the GOP is longer than the spacing."""
    return write_clip(tmp_path_factory.mktemp("clips") / "long_gop.mp4", frames=100, gop=60)


def test_a_long_gop_clip_samples_the_reference_frames_by_the_stated_rule(long_gop):
    frames, pts = assert_same(long_gop, 8)
    n, t = 100, 8  # constant frame rate: frame k at k/25 s; k = floor((2i+1) n / 2t)
    assert np.allclose(pts, [((2 * i + 1) * n // (2 * t)) / 25 for i in range(t)])
    with av.open(str(long_gop)) as container:
        keys = [p.pts for p in container.demux(video=0) if p.is_keyframe and p.size]
    assert len(keys) == 2  # the generated clip has the long GOP it claims


def test_seeking_to_every_target_decodes_forward_from_the_real_keyframe(long_gop, monkeypatch):
    index = K._packet_index  # claim every packet is a keyframe: each target is then sought directly, and
    monkeypatch.setattr(K, "_packet_index", lambda *a: (index(*a)[0],) * 2)  # the seek lands on a real one
    assert_same(long_gop, 8)


def test_a_target_without_a_frame_falls_back_to_decoding_everything(long_gop, monkeypatch):
    def phantom(*args):  # a phantom packet 1 tick after every real one: some picks have no frame
        pts, keys = index(*args)
        return sorted(p + d for p in pts for d in (0, 1)), keys

    index = K._packet_index
    monkeypatch.setattr(K, "_packet_index", phantom)
    with pytest.warns(UserWarning, match="long_gop.mp4: no frame decoded at pts .* decoding every frame"):
        frames, pts = K.sample_frames(long_gop, 8)
    ref_frames, ref_pts = K.reference_frames(long_gop, 8)
    assert np.array_equal(frames, ref_frames) and np.array_equal(pts, ref_pts)


def test_more_samples_than_frames_repeat_frames(tmp_path):
    frames, pts = assert_same(write_clip(tmp_path / "short.mp4", frames=5, gop=60), 8)
    assert len(set(pts.tolist())) == 5


def test_resizing_the_short_side_matches_the_reference(long_gop):
    frames, _ = assert_same(long_gop, 4, short_side=64)
    assert frames.shape == (4, 64, 85, 3)


@pytest.mark.parametrize("suffix,codec", [(".mp4", None), (".mkv", None), (".mp4", "mpeg4")])
def test_clips_whose_first_pts_is_not_zero(tmp_path, suffix, codec):
    path = write_clip(tmp_path / f"late{suffix}", frames=90, gop=50, first_pts=37, codec=codec)
    frames, pts = assert_same(path, 8)
    assert pts[0] > 37 / 25


def test_a_variable_frame_rate_is_sampled_evenly_in_time(tmp_path):
    steps = np.random.default_rng(0).integers(1, 4, 80)  # 1 to 3 ticks of 1/25 s between frames
    pts = np.concatenate([[0], np.cumsum(steps)[:-1]]).tolist()
    frames, times = assert_same(write_clip(tmp_path / "vfr.mkv", frames=80, gop=40, pts=pts), 8)
    end = pts[-1] + pts[-1] - pts[-2]
    expected = [max(p for p in pts if 16 * p <= (2 * i + 1) * end) / 25 for i in range(8)]
    assert np.allclose(times, expected)


def test_unreadable_files_name_the_file_and_the_fix(tmp_path):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video at all" * 10)
    with pytest.raises(K.VideoError, match="bad.mp4.*re-download"):
        K.sample_frames(bad)


# ----------------------------------------------------------------------------- pre-scan
def write_audio_only(path):
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=16000)
        for i in range(5):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 16000, i * 1024
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def test_prescan_lists_every_broken_clip_with_its_reason(tmp_path, long_gop, monkeypatch):
    folder = tmp_path / "val"
    folder.mkdir()
    good = write_clip(folder / "good.mp4", frames=20, gop=60)
    write_clip(folder / "short.mp4", frames=5)
    (folder / "empty.mp4").write_bytes(b"")
    data = good.read_bytes()
    (folder / "cut.mp4").write_bytes(data[: len(data) // 2])  # moov atom at the end: lost
    write_clip(folder / "cut_tail.mkv", frames=100)
    data = (folder / "cut_tail.mkv").read_bytes()
    (folder / "cut_tail.mkv").write_bytes(data[: len(data) // 2])  # decodes half, no error
    write_audio_only(folder / "audio.m4a")
    write_clip(folder / "boom.mp4", frames=20)
    clips = [K.Clip(name.split(".")[0], "abseiling", 0, folder / name, "val") for name in
             ("good.mp4", "short.mp4", "empty.mp4", "cut.mp4", "cut_tail.mkv", "audio.m4a", "gone.mp4", "boom.mp4")]
    monkeypatch.setenv(K.CRASH_ENV, "boom.mp4")
    manifest = K.prescan(clips, workers=2, manifest=tmp_path / "manifest.json")
    reasons = {cid: info["reason"] for cid, info in manifest["clips"].items()}
    assert reasons == {"good": None, "short": "too_short", "empty": "zero_bytes", "cut": "unreadable",
                       "cut_tail": "truncated", "audio": "no_video_stream", "gone": "missing", "boom": "crashed"}
    assert manifest["counts"] == {"decodable": 1, "missing": 1, "zero_bytes": 1, "unreadable": 1,
                                  "no_video_stream": 1, "truncated": 1, "decode_error": 0, "too_short": 1,
                                  "crashed": 1}
    assert manifest["excluded"]["crashed"] == ["boom"]
    info = manifest["clips"]["good"]
    assert (info["frames_decoded"], info["frames_metadata"], info["width"], info["height"]) == (20, 20, 320, 240)
    assert info["fps"] == 25 and info["duration_s"] == pytest.approx(0.8)
    assert manifest["clips"]["short"]["frames_decoded"] == 5
    assert json.loads((tmp_path / "manifest.json").read_text()) == manifest
    assert K.decodable_clips(clips, manifest) == clips[:1]

    # a re-run decodes only changed files and past crashes: "good" would now crash if it were decoded again
    monkeypatch.setenv(K.CRASH_ENV, "good.mp4")
    again = K.prescan(clips, workers=2, manifest=tmp_path / "manifest.json")
    assert again["clips"]["good"]["decodable"] and again["clips"]["boom"]["decodable"]
    os.utime(good, ns=(1, 1))
    monkeypatch.delenv(K.CRASH_ENV)
    assert K.prescan(clips, workers=1, manifest=tmp_path / "manifest.json")["clips"]["good"]["mtime_ns"] == 1


@pytest.mark.fixtures
def test_the_real_val_csv_with_one_clip_present_then_prescanned(tmp_path):
    data = shared_or_skip() / "kinetics"
    (tmp_path / "annotations").mkdir()
    for name in ("kinetics-400_val.csv", "label_map_k400.txt"):
        (tmp_path / "annotations" / name).symlink_to(data / name)
    (tmp_path / "val").mkdir()  # demo.mp4 (arm wrestling) posing as the csv's first clip
    (tmp_path / "val" / "0wR5jVB-WPk_000417_000427.mp4").symlink_to(data / "videos" / "demo.mp4")
    found, missing = K.list_clips(tmp_path, "val")
    assert [c.id for c in found] == ["0wR5jVB-WPk_000417_000427"] and len(missing) == 19905
    assert missing[0].label == "abseiling" and missing[-1].label_id == 399
    manifest = K.prescan(found + missing[:3], workers=1)
    assert manifest["counts"]["decodable"] == 1 and manifest["counts"]["missing"] == 3
    info = manifest["clips"][found[0].id]
    assert (info["frames_decoded"], info["frames_metadata"], info["fps"], info["width"], info["height"]) == \
        (280, 280, 28.0, 340, 256)
    assert info["duration_s"] == pytest.approx(10.0)


def test_the_command_line_prescans_a_split_and_names_the_excluded(tmp_path, capsys):
    root = kinetics_root(tmp_path)
    (root / "val").mkdir()
    (root / "val" / "x1_000005_000015.mp4").write_bytes(b"")
    result = K.main([str(root), "--split", "val"])
    assert result["counts"]["zero_bytes"] == 1 and result["counts"]["missing"] == 3
    assert (root / "prescan_val.json").is_file()
    assert "zero_bytes (1): x1_000005_000015" in capsys.readouterr().out
