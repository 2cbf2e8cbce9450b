"""Kinetics-400 clips: annotations, video layouts, a crash-proof pre-scan and exact frame sampling.

Annotations: ``kinetics-400_<split>.csv`` (header ``label,youtube_id,time_start,time_end,split``,
plus ``is_cc`` in newer copies; labels are quoted and hold spaces, commas never, parentheses and
apostrophes sometimes), looked for at ``ROOT/annotations/kinetics-400_<split>.csv`` first, then
``ROOT/kinetics-400_<split>.csv``.

Videos, ``layout`` = "flat", "by_label" or "auto" (by_label when ``ROOT/<split>`` holds any folder):

    flat      ROOT/<split>/<youtube_id>_<time_start:06d>_<time_end:06d>.mp4          (CVDF tarballs)
    by_label  ROOT/<split>/<label>/<youtube_id>_<time_start:06d>_<time_end:06d>.mp4  (crawler output)

A label folder may spell the label as in the csv ("air drumming") or with underscores for spaces
("air_drumming"); both are accepted. ``.mkv`` and ``.webm`` are accepted where ``.mp4`` is absent.

Class ids: the line order of a label map (``label_map_k400.txt``, one label per line, as mmaction2
ships it) when one is given or found at ``ROOT/annotations/`` or ``ROOT/``; otherwise the sorted
label set of the train csv. (The mmaction2 map *is* the sorted label set, so both agree on real
Kinetics-400.) A split's own csv is never used for ids: a partial split would shift them.

Frame rule (``sample_frames`` and ``reference_frames`` share it): the clip is on screen from p_first,
the smallest presentation timestamp of its video frames, to p_end = p_last + (p_last - p_prev), the
largest pts plus the last frame interval (p_end = p_last + 1 tick for a one-frame clip). Frame i of T
is the frame on screen at the centre of the i-th of T equal segments of [p_first, p_end): the frame
with the largest pts such that ``2T (pts - p_first) <= (2i + 1)(p_end - p_first)`` (integers in the
stream's time base, no rounding). At a constant frame rate that is frame floor((2i + 1) N / 2T) of N,
the centre of the i-th of T equal segments of the frame list; at a variable rate it stays even in time.

Broken clips: ``prescan`` decodes every clip once in worker processes and writes a JSON manifest;
evaluation reads only clips the manifest calls decodable, and the excluded ids are listed by reason
(``REASONS``). Nothing is skipped silently.

    list_clips(root, split, layout="auto", label_map=None) -> (found [Clip], missing [Clip]), csv order
    prescan(clips, manifest=None, *, workers=2, min_frames=8) -> manifest dict (see its docstring)
    sample_frames(path, num_frames=8, short_side=None) -> frames (T, H, W, 3) uint8, pts (T,) seconds
    reference_frames(path, num_frames=8, short_side=None) -> the same, by decoding every frame
    python -m datamodules.kinetics ROOT --split val      # the pre-scan from the command line
"""
from __future__ import annotations

import bisect
import contextlib
import csv
import json
import os
import time
import warnings
from collections import deque
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from bench.atomic import write_atomic

COLUMNS = ("label", "youtube_id", "time_start", "time_end", "split")  # + optional "is_cc"
VIDEO_SUFFIXES = (".mp4", ".mkv", ".webm")
MIN_FRAMES = 8
TRUNCATED_FRACTION = 0.9  # decoded frames span less than this share of the container's duration: truncated
MANIFEST_FORMAT = "regionbench-kinetics-prescan/1"
CRASH_ENV = "REGIONBENCH_KINETICS_CRASH_ON"  # test hook: a worker os._exit()s on a path ending with this
RESCAN_HINT = "re-download the clip (the CVDF mirror has most) or re-encode it: ffmpeg -i in.mp4 -c:v libx264 out.mp4"
REASONS = {  # why a clip is excluded -> what to do about it
    "missing": "the csv lists it but no file exists: download it, or report the clip as excluded",
    "zero_bytes": "the file is empty (an interrupted download): " + RESCAN_HINT,
    "unreadable": "the container cannot be opened (truncated, e.g. 'moov atom not found', or not a video): "
                  + RESCAN_HINT,
    "no_video_stream": "the file holds no video stream (audio-only download): re-download the video",
    "truncated": "the decoded frames cover under 90% of the duration the container states (a cut-off "
                 "download that decodes without an error): " + RESCAN_HINT,
    "decode_error": "decoding stopped with an error part-way: " + RESCAN_HINT,
    "too_short": "fewer decoded frames than the sampler needs: report it as excluded",
    "crashed": "decoding it killed the worker process (a crash in native code): " + RESCAN_HINT,
}


class VideoError(ValueError):
    """A clip that cannot be read; the message names the file and what to do."""


@dataclass(frozen=True)
class Clip:
    id: str            # "<youtube_id>_<start:06d>_<end:06d>": no '.' or '/', safe as a shard key
    label: str         # as in the csv, spaces included
    label_id: int
    path: Path         # where the video is (or would be, if missing)
    split: str

    @property
    def image_path(self) -> Path:
        """The file extraction names when it reports on this unit (as for an image)."""
        return self.path


# ----------------------------------------------------------------------------- annotations
def _find(root: Path, name: str) -> Path | None:
    for candidate in (root / "annotations" / name, root / name):
        if candidate.is_file():
            return candidate
    return None


def annotation_path(root: str | Path, split: str) -> Path:
    """``ROOT/annotations/kinetics-400_<split>.csv``, else ``ROOT/kinetics-400_<split>.csv``."""
    root, name = Path(root), f"kinetics-400_{split}.csv"
    found = _find(root, name)
    if found is None:
        raise FileNotFoundError(f"no {name} at {root / 'annotations' / name} or {root / name}: copy the "
                                "Kinetics-400 annotation csv there (activitynet/ActivityNet Crawler/Kinetics/data)")
    return found


def read_annotations(path: str | Path) -> list[dict]:
    """The csv's rows in file order as dicts with label, youtube_id, time_start (int s), time_end (int s),
    split, and is_cc (bool, or None when the column is absent)."""
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path}: header {reader.fieldnames} lacks {missing}; expected "
                             f"{','.join(COLUMNS)}[,is_cc] (a Kinetics annotation csv)")
        rows = []
        for line, row in enumerate(reader, start=2):
            try:
                start, end = int(row["time_start"]), int(row["time_end"])
            except (TypeError, ValueError):
                raise ValueError(f"{path}:{line}: time_start/time_end must be whole seconds, got "
                                 f"{row['time_start']!r}, {row['time_end']!r}") from None
            is_cc = row.get("is_cc")
            rows.append({"label": row["label"], "youtube_id": row["youtube_id"], "time_start": start,
                         "time_end": end, "split": row["split"],
                         "is_cc": None if is_cc is None else is_cc.strip() == "1"})
    return rows


def read_label_map(path: str | Path) -> list[str]:
    """Labels in file order, one per line (blank lines ignored); duplicates are an error."""
    labels = [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    if len(set(labels)) != len(labels):
        raise ValueError(f"{path} lists a label twice; a label map holds each class once")
    return labels


def class_names(root: str | Path, label_map: str | Path | None = None) -> list[str]:
    """Class names in id order: ``label_map`` if given, else ``label_map_k400.txt`` under ``ROOT/annotations``
    or ``ROOT``, else the sorted labels of the train csv."""
    path = Path(label_map) if label_map is not None else _find(Path(root), "label_map_k400.txt")
    if path is not None:
        return read_label_map(path)
    train = _find(Path(root), "kinetics-400_train.csv")
    if train is None:
        raise FileNotFoundError(f"no label map and no train csv under {root}: class ids need one of "
                                "label_map_k400.txt or kinetics-400_train.csv (pass label_map=...)")
    return sorted({row["label"] for row in read_annotations(train)})


def clip_id(youtube_id: str, start: int, end: int) -> str:
    cid = f"{youtube_id}_{start:06d}_{end:06d}"
    if "." in cid or "/" in cid:
        raise ValueError(f"clip id {cid!r} holds '.' or '/', which shard keys cannot: check the csv's youtube_id")
    return cid


# ----------------------------------------------------------------------------- layouts
def _videos_in(folder: Path) -> dict[str, Path]:
    """stem -> path of the videos directly in ``folder`` (.mp4 preferred over .mkv over .webm)."""
    found: dict[str, Path] = {}
    rank = {suffix: i for i, suffix in enumerate(VIDEO_SUFFIXES)}
    if folder.is_dir():
        for entry in os.scandir(folder):
            path = Path(entry.path)
            if path.suffix in rank and entry.is_file():
                if path.stem not in found or rank[path.suffix] < rank[found[path.stem].suffix]:
                    found[path.stem] = path
    return found


def detect_layout(root: str | Path, split: str) -> str:
    """"by_label" when ``ROOT/<split>`` holds a folder, else "flat"."""
    split_dir = Path(root) / split
    if not split_dir.is_dir():
        raise FileNotFoundError(f"video folder {split_dir} not found: expected ROOT/<split>/<id>.mp4 (flat) "
                                "or ROOT/<split>/<label>/<id>.mp4 (by_label)")
    return "by_label" if any(e.is_dir() for e in os.scandir(split_dir)) else "flat"


def list_clips(root: str | Path, split: str, layout: str = "auto",
               label_map: str | Path | None = None) -> tuple[list[Clip], list[Clip]]:
    """(found, missing): the csv's clips in csv order, split by whether their video file exists.
    A missing clip's ``path`` is where the flat (or csv-spelt label folder) layout would put it."""
    root = Path(root)
    layout = detect_layout(root, split) if layout == "auto" else layout
    if layout not in ("flat", "by_label"):
        raise ValueError(f"layout {layout!r} unknown; valid: 'auto', 'flat', 'by_label'")
    ids = {name: i for i, name in enumerate(class_names(root, label_map))}
    split_dir = root / split
    flat = _videos_in(split_dir) if layout == "flat" else {}
    folders: dict[str, dict[str, Path]] = {}
    found, missing, seen = [], [], set()
    for row in read_annotations(annotation_path(root, split)):
        label = row["label"]
        if label not in ids:
            raise ValueError(f"label {label!r} of {row['youtube_id']} is not in the label map "
                             f"({len(ids)} classes): use the Kinetics-400 label map for a Kinetics-400 csv")
        cid = clip_id(row["youtube_id"], row["time_start"], row["time_end"])
        if cid in seen:
            raise ValueError(f"clip {cid} appears twice in the {split} csv: de-duplicate the csv")
        seen.add(cid)
        if layout == "flat":
            path = flat.get(cid)
            default = split_dir / f"{cid}.mp4"
        else:
            if label not in folders:  # the csv spelling, else spaces as underscores
                folders[label] = {**_videos_in(split_dir / label.replace(" ", "_")), **_videos_in(split_dir / label)}
            path = folders[label].get(cid)
            default = split_dir / label / f"{cid}.mp4"
        clip = Clip(cid, label, ids[label], path or default, split)
        (found if path is not None else missing).append(clip)
    return found, missing


# ----------------------------------------------------------------------------- frame sampling
def _open(path: str | Path):
    import av

    try:
        return av.open(str(path))
    except (av.FFmpegError, OSError) as err:
        raise VideoError(f"cannot open {path} ({err}): {RESCAN_HINT}") from err


def _video_stream(container, path):
    if not container.streams.video:
        raise VideoError(f"{path} has no video stream (audio-only?): {REASONS['no_video_stream']}")
    return container.streams.video[0]


def _pick(sorted_pts: list[int], num_frames: int) -> list[int]:
    """The chosen pts of each of ``num_frames`` samples (the rule in the module docstring)."""
    first, last = sorted_pts[0], sorted_pts[-1]
    end = last + (last - sorted_pts[-2] if len(sorted_pts) > 1 and last > sorted_pts[-2] else 1)
    picks, k = [], 0
    for i in range(num_frames):  # the largest pts with 2T (pts - first) <= (2i + 1)(end - first)
        while k + 1 < len(sorted_pts) and \
                2 * num_frames * (sorted_pts[k + 1] - first) <= (2 * i + 1) * (end - first):
            k += 1
        picks.append(sorted_pts[k])
    return picks


def _rgb(frame, short_side: int | None) -> np.ndarray:
    """(H, W, 3) uint8; the short side resized to ``short_side`` (PIL bilinear) when given."""
    image = frame.to_ndarray(format="rgb24")
    if short_side is None:
        return image
    from PIL import Image

    h, w = image.shape[:2]
    scale = short_side / min(h, w)
    size = (short_side, round(h * scale)) if w <= h else (round(w * scale), short_side)
    return np.asarray(Image.fromarray(image).resize(size, Image.BILINEAR))


def _stack(frames: dict[int, np.ndarray], picks: list[int], time_base) -> tuple[np.ndarray, np.ndarray]:
    return (np.stack([frames[p] for p in picks]),
            np.array([float(p * time_base) for p in picks], dtype=np.float64))


def reference_frames(path: str | Path, num_frames: int = 8,
                     short_side: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Decode every frame in order, then pick by the module's rule: frames (T, H, W, 3) uint8 and
    their presentation times (T,) float64 seconds. Slow and obviously correct: the test oracle."""
    with _open(path) as container:
        stream = _video_stream(container, path)
        decoded = [(frame.pts, _rgb(frame, short_side)) for frame in container.decode(stream)]
        if not decoded or any(p is None for p, _ in decoded):
            raise VideoError(f"{path} decoded no frames with timestamps: {RESCAN_HINT}")
        decoded.sort(key=lambda item: item[0])  # stable: the first of equal pts wins, as below
        frames: dict[int, np.ndarray] = {}
        for pts, image in decoded:
            frames.setdefault(pts, image)
        picks = _pick([p for p, _ in decoded], num_frames)
        return _stack(frames, picks, stream.time_base)


def _packet_index(container, stream, path) -> tuple[list[int], list[int]]:
    """(every packet's pts sorted, keyframe packets' pts sorted), read without decoding."""
    pts, keys = [], []
    for packet in container.demux(stream):
        if packet.size == 0:
            continue  # the demuxer's end-of-stream marker
        if packet.pts is None:
            raise VideoError(f"{path} has packets without presentation timestamps: {RESCAN_HINT}")
        pts.append(packet.pts)
        if packet.is_keyframe:
            keys.append(packet.pts)
    if not pts:
        raise VideoError(f"{path} holds no video packets: {RESCAN_HINT}")
    return sorted(pts), sorted(keys)


def sample_frames(path: str | Path, num_frames: int = 8,
                  short_side: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``num_frames`` frames by the module's rule: frames (T, H, W, 3) uint8 and their presentation
    times (T,) float64 seconds; byte-identical to ``reference_frames``.

    One pass over the packets (no decoding) gives the pts span and the keyframes. Then, for each
    chosen pts in order: if its preceding keyframe lies beyond what is decoded so far, seek there
    (the seek lands on that keyframe or an earlier one) and decode forward; else keep decoding
    forward. A frame is returned only when its own pts equals the chosen pts, never the keyframe the
    seek landed on. If a chosen packet yields no frame (a damaged stream), this falls back to
    ``reference_frames`` with a warning.

    ``short_side``: None (default) keeps the decoded size, so the backbone's own transform does the
    one resize (timm's rule: weights travel with their preprocessing); 256 is the usual storage size.
    """
    with _open(path) as container:
        stream = _video_stream(container, path)
        pts, keys = _packet_index(container, stream, path)
        picks = _pick(pts, num_frames)
        frames: dict[int, np.ndarray] = {}
        decoder, position = None, None  # the running frame generator and the last pts it gave
        for target in sorted(set(picks)):
            key = keys[bisect.bisect_right(keys, target) - 1] if keys and keys[0] <= target else pts[0]
            seek = decoder is None or position is None or key > position
            for start in (key, pts[0]):  # then from the stream's start, if that route missed the target
                if seek:
                    container.seek(start, stream=stream)  # backward=True: a keyframe at or before start
                    decoder, position = container.decode(stream), None
                for frame in decoder:
                    if frame.pts is not None and frame.pts > target:
                        break  # the seek landed after the target, or its packet gave no frame
                    position = frame.pts
                    if frame.pts == target:
                        frames[target] = _rgb(frame, short_side)
                        break
                if target in frames or start == pts[0]:
                    break
                seek = True
            if target not in frames:
                warnings.warn(f"{path}: no frame decoded at pts {target} (damaged stream?); decoding every "
                              "frame instead", stacklevel=2)
                return reference_frames(path, num_frames, short_side)
        return _stack(frames, picks, stream.time_base)


# ----------------------------------------------------------------------------- pre-scan
def probe(path: str) -> dict:
    """Decode every frame of one file (no colour conversion) and report what a manifest records.
    Runs in a worker process; a crash in native code kills only the worker."""
    import av

    crash_on = os.environ.get(CRASH_ENV)
    if crash_on and path.endswith(crash_on):
        os._exit(70)
    info = {"decodable": False, "reason": None, "detail": None, "frames_decoded": 0, "frames_metadata": None,
            "fps": None, "width": None, "height": None, "duration_s": None, "duration_metadata_s": None,
            "first_pts_s": None, "last_pts_s": None}
    try:
        container = av.open(path)
    except (av.FFmpegError, OSError) as err:
        return {**info, "reason": "unreadable", "detail": str(err)}
    with container:
        if not container.streams.video:
            return {**info, "reason": "no_video_stream",
                    "detail": f"streams: {[s.type for s in container.streams]}"}
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate
        info.update(frames_metadata=stream.frames or None, fps=float(rate) if rate else None,
                    width=stream.codec_context.width, height=stream.codec_context.height,
                    duration_metadata_s=(float(stream.duration * stream.time_base) if stream.duration
                                         else container.duration / 1e6 if container.duration else None))
        first = last = None
        try:
            for frame in container.decode(stream):
                info["frames_decoded"] += 1
                if frame.pts is not None:
                    first = frame.pts if first is None else min(first, frame.pts)
                    last = frame.pts if last is None else max(last, frame.pts)
        except (av.FFmpegError, ValueError, IndexError) as err:
            info.update(reason="decode_error", detail=f"after {info['frames_decoded']} frames: {err}")
        if first is not None:
            tb = stream.time_base
            info.update(first_pts_s=float(first * tb), last_pts_s=float(last * tb),
                        duration_s=float((last - first) * tb) + (1 / info["fps"] if info["fps"] else 0.0))
    info["decodable"] = info["reason"] is None and info["frames_decoded"] > 0
    claimed = info["duration_metadata_s"]
    if info["decodable"] and claimed and info["duration_s"] < TRUNCATED_FRACTION * claimed:
        info.update(decodable=False, reason="truncated",
                    detail=f"decoded {info['frames_decoded']} frames over {info['duration_s']:.2f} s of the "
                           f"{claimed:.2f} s the container states")
    if info["reason"] is None and not info["decodable"]:
        info.update(reason="decode_error", detail="no frame decoded")
    return info


def _result(future) -> dict:
    """A probe's result; a Python error probe() did not expect is the file's decode_error. A dead worker
    raises BrokenProcessPool."""
    try:
        return future.result()
    except BrokenProcessPool:
        raise
    except Exception as err:
        return {"decodable": False, "reason": "decode_error", "detail": f"{type(err).__name__}: {err}"}


def _ping() -> bool:
    return True


def _pool(workers: int) -> ProcessPoolExecutor:
    """A pool of spawned workers that has been seen to start (so a dead worker later means a bad file)."""
    pool = ProcessPoolExecutor(workers, mp_context=get_context("spawn"))
    try:
        pool.submit(_ping).result()
    except BrokenProcessPool:
        pool.shutdown()
        raise RuntimeError("prescan's worker processes die on start-up. They are spawned: run prescan from an "
                           "importable script or module, under `if __name__ == \"__main__\":`, not from stdin"
                           ) from None
    return pool


def _probe_alone(path: str) -> dict:
    """``probe`` in a fresh one-worker pool: a crash here is this file's."""
    with _pool(1) as pool:
        try:
            return _result(pool.submit(probe, path))
        except BrokenProcessPool:
            return {"decodable": False, "reason": "crashed", "detail": "the worker process died decoding it"}


def _probe_all(paths: list[str], workers: int, on_result) -> None:
    """Call ``on_result(path, info)`` for every path, probing at most ``workers`` at a time. When a worker
    dies, the (at most ``workers``) files in flight are re-probed one by one to find the culprit."""
    queue = deque(paths)
    while queue:
        inflight = {}
        # a worker that dies breaks the pool: stop there; the files still in flight are probed alone below
        with _pool(workers) as pool, contextlib.suppress(BrokenProcessPool):
            while queue or inflight:
                while queue and len(inflight) < workers:
                    path = queue.popleft()
                    inflight[pool.submit(probe, path)] = path
                done, _ = wait(inflight, return_when=FIRST_COMPLETED)
                for future in done:
                    info = _result(future)  # before the pop: a crashed file stays in flight
                    on_result(inflight.pop(future), info)
        for path in inflight.values():  # the pool broke: find which file killed it
            on_result(path, _probe_alone(path))


def _summary(clips: dict[str, dict]) -> tuple[dict, dict]:
    counts, excluded = {"decodable": 0, **{reason: 0 for reason in REASONS}}, {reason: [] for reason in REASONS}
    for cid, info in clips.items():
        if info["decodable"]:
            counts["decodable"] += 1
        else:
            counts[info["reason"]] += 1
            excluded[info["reason"]].append(cid)
    return counts, {reason: ids for reason, ids in excluded.items() if ids}


def prescan(clips: list[Clip], manifest: str | Path | None = None, *, workers: int = 2,
            min_frames: int = MIN_FRAMES, save_every_s: float = 60.0) -> dict:
    """Decode every clip once in ``workers`` spawned processes; returns (and, with ``manifest``, writes
    atomically, also every ``save_every_s`` seconds) the manifest:

        {"format", "min_frames", "counts": {"decodable": n, <reason>: n, ...},
         "excluded": {<reason>: [clip ids]}, "reasons": REASONS,
         "clips": {id: {"path", "size", "mtime_ns", "label", "label_id", "split", "decodable", "reason",
                        "detail", "frames_decoded", "frames_metadata", "fps", "width", "height",
                        "duration_s", "duration_metadata_s", "first_pts_s", "last_pts_s"}}}

    A clip already in ``manifest`` with the same path, size and mtime is not decoded again, unless it
    crashed its worker last time (a crash may be the machine's: out of memory, killed). Missing and
    zero-byte files are classified here without a worker; clips decoding fewer than ``min_frames``
    frames are "too_short". ``frames_decoded`` is the count to trust; ``frames_metadata`` is the
    container's claim.
    """
    manifest = Path(manifest) if manifest is not None else None
    old = json.loads(manifest.read_text())["clips"] if manifest is not None and manifest.is_file() else {}
    result: dict[str, dict] = {}
    todo: dict[str, Clip] = {}
    for clip in clips:
        base = {"path": str(clip.path), "label": clip.label, "label_id": clip.label_id, "split": clip.split}
        try:
            stat = clip.path.stat()
        except FileNotFoundError:
            result[clip.id] = {**base, "decodable": False, "reason": "missing", "detail": "no such file"}
            continue
        base.update(size=stat.st_size, mtime_ns=stat.st_mtime_ns)
        previous = old.get(clip.id)
        if previous and previous.get("reason") != "crashed" and \
                all(previous.get(k) == base[k] for k in ("path", "size", "mtime_ns")):
            result[clip.id] = {**previous, **base}
        elif stat.st_size == 0:
            result[clip.id] = {**base, "decodable": False, "reason": "zero_bytes", "detail": "0 bytes"}
        else:
            result[clip.id] = base
            todo[str(clip.path)] = clip

    def write() -> dict:
        for info in result.values():  # too_short depends on min_frames, so it is judged here, not stored
            if info.get("reason") == "too_short":
                info.update(decodable=True, reason=None, detail=None)
            if "decodable" in info and info["decodable"] and info["frames_decoded"] < min_frames:
                info.update(decodable=False, reason="too_short",
                            detail=f"{info['frames_decoded']} frames decoded, {min_frames} needed")
        done = {cid: info for cid, info in result.items() if "decodable" in info}
        counts, excluded = _summary(done)
        out = {"format": MANIFEST_FORMAT, "min_frames": min_frames, "counts": counts, "excluded": excluded,
               "reasons": REASONS, "clips": done}
        if manifest is not None:
            manifest.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(manifest, json.dumps(out, indent=1).encode())
        return out

    last_save = time.monotonic()

    def on_result(path: str, info: dict) -> None:
        nonlocal last_save
        clip = todo[path]
        result[clip.id] = {**result[clip.id], **info}
        if manifest is not None and time.monotonic() - last_save > save_every_s:
            write()
            last_save = time.monotonic()

    _probe_all(list(todo), workers, on_result)
    return write()


def decodable_clips(clips: list[Clip], manifest: dict) -> list[Clip]:
    """The clips the manifest calls decodable, in the given order; raises naming any clip it lacks."""
    unknown = [c.id for c in clips if c.id not in manifest["clips"]]
    if unknown:
        raise KeyError(f"{len(unknown)} clips (e.g. {unknown[:3]}) are not in the pre-scan manifest: "
                       "run prescan(clips, manifest=...) again")
    return [c for c in clips if manifest["clips"][c.id]["decodable"]]


def main(argv: list[str] | None = None) -> dict:
    """python -m datamodules.kinetics ROOT --split val [--layout auto] [--manifest PATH] [--workers 2]"""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m datamodules.kinetics", description="Pre-scan a Kinetics-400 "
                                     "split: decode every clip once, write the manifest")
    parser.add_argument("root")
    parser.add_argument("--split", default="val")
    parser.add_argument("--layout", default="auto", choices=("auto", "flat", "by_label"))
    parser.add_argument("--label-map", default=None)
    parser.add_argument("--manifest", default=None, help="default: ROOT/prescan_<split>.json")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--min-frames", type=int, default=MIN_FRAMES)
    args = parser.parse_args(argv)
    found, missing = list_clips(args.root, args.split, args.layout, args.label_map)
    path = Path(args.manifest or Path(args.root) / f"prescan_{args.split}.json")
    result = prescan(found + missing, path, workers=args.workers, min_frames=args.min_frames)
    print(f"{path}: {len(found) + len(missing)} clips in the {args.split} csv; " +
          ", ".join(f"{reason} {n}" for reason, n in result["counts"].items() if n))
    for reason, ids in result["excluded"].items():
        print(f"  {reason} ({len(ids)}): {', '.join(ids[:5])}{' ...' if len(ids) > 5 else ''} -- {REASONS[reason]}")
    return result


if __name__ == "__main__":
    main()
