"""Exact frame sampling of a Kinetics clip: ours vs decoding every frame.

    python -m benchmarks.video_frames [--frames 8] [--gop 125] [--runs 5]

Input (``write_clip``): a generated 10 s, 320x240, 25 fps H.264 clip (libx264, else mpeg4) with a
GOP of ``gop`` frames and 2 B-frames, every frame different; and the fixture clips
``../shared/fixtures/data/kinetics/videos/{demo,test}.mp4`` when present (H.264, 340x256, B-frames,
keyframes 40-240 frames apart).
Ours: ``datamodules.kinetics.sample_frames`` (a packet pass for pts and keyframes, then seek to a
target's keyframe only when it lies beyond what is decoded, decode forward, convert only the chosen
frames). Reference: ``reference_frames`` (decode and convert every frame, then pick).
Check: the T frames are byte-identical and at the same presentation times.
"""
from __future__ import annotations

import argparse
import os
import tempfile
from fractions import Fraction
from pathlib import Path

import numpy as np

from benchmarks.measure import median_seconds
from datamodules.kinetics import reference_frames, sample_frames

FIXTURE_VIDEOS = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "data" / "kinetics" / "videos"


def video_codec() -> str:
    import av

    return "libx264" if "libx264" in av.codecs_available else "mpeg4"


def write_clip(path: str | Path, frames: int = 250, fps: int = 25, width: int = 320, height: int = 240,
               gop: int = 60, first_pts: int = 0, codec: str | None = None, pts: list[int] | None = None) -> Path:
    """Write a clip whose frame k (pts ``first_pts + k`` in a 1/fps time base, or ``pts[k]``: a variable
    frame rate) is a gradient shifted by k, so that any wrong pick shows; keyframes every ``gop`` frames
    exactly, 2 B-frames. The container follows the suffix."""
    import av

    codec = codec or video_codec()
    path = Path(path)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.time_base = Fraction(1, fps)
        if codec == "libx264":
            stream.options = {"preset": "veryfast",
                              "x264-params": f"keyint={gop}:min-keyint={gop}:scenecut=0:bframes=2"}
        else:
            stream.gop_size = gop
            stream.options = {"bf": "2", "sc_threshold": "1000000000"}
        yy, xx = np.mgrid[:height, :width]
        for k in range(frames):
            image = np.stack([(xx + 3 * k) % 256, (yy + 2 * k) % 256, np.full_like(xx, 7 * k % 256)], -1)
            frame = av.VideoFrame.from_ndarray(image.astype(np.uint8), format="rgb24")
            frame.pts = first_pts + k if pts is None else pts[k]
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def compare(ours, reference) -> dict:
    (frames, pts), (ref_frames, ref_pts) = ours, reference
    same = frames.shape == ref_frames.shape and bool(np.array_equal(frames, ref_frames))
    same_pts = bool(np.array_equal(pts, ref_pts))
    return {"ok": same and same_pts, "identical_frames": same, "same_pts": same_pts,
            "text": ("identical frames and pts" if same and same_pts
                     else f"frames {'equal' if same else 'DIFFER'}, pts {'equal' if same_pts else 'DIFFER'}")}


def decode_only(path: Path) -> int:
    """Decode every frame, convert none: the floor of any single forward pass. Returns the frame count."""
    import av

    with av.open(str(path)) as container:
        return sum(1 for _ in container.decode(video=0))


def time_clip(path: Path, num_frames: int, runs: int) -> dict:
    ours, ours_runs, ours_out = median_seconds(lambda: sample_frames(path, num_frames), runs)
    reference, ref_runs, ref_out = median_seconds(lambda: reference_frames(path, num_frames), max(1, runs // 2), 0)
    decode, _, frames = median_seconds(lambda: decode_only(path), runs, 0)
    return {"clip": path.name, "frames": frames, "ours_s": ours, "ours_runs": ours_runs, "reference_s": reference,
            "reference_runs": ref_runs, "speedup": reference / ours, "decode_only_s": decode,
            "check": compare(ours_out, ref_out)}


def row(runs: int = 5, num_frames: int = 8, gop: int = 125, seconds: int = 10, fixtures: bool = True) -> dict:
    """One row for ``benchmarks.run``: the generated clip timed, the fixture clips (if present and
    ``fixtures``) checked and timed too."""
    with tempfile.TemporaryDirectory() as tmp:
        clip = write_clip(Path(tmp) / "long_gop.mp4", frames=25 * seconds, gop=gop)
        main = time_clip(clip, num_frames, runs)
    fixtures = [time_clip(p, num_frames, runs) for p in sorted(FIXTURE_VIDEOS.glob("*.mp4"))] if fixtures else []
    ok = main["check"]["ok"] and all(f["check"]["ok"] for f in fixtures)
    extra = f"; decoding alone (no RGB) {main['decode_only_s'] * 1e3:.0f} ms" + "".join(
        f"; {f['clip']}: {f['speedup']:.1f}x, {'identical' if f['check']['ok'] else 'DIFFERENT'}" for f in fixtures)
    return {"id": "video_frames", "hot_path": f"Kinetics clip: sample {num_frames} frames exactly",
            "input": f"{seconds} s 320x240 25 fps {video_codec()}, GOP {gop}, 2 B-frames",
            "ours_s": main["ours_s"], "ours_runs": main["ours_runs"], "reference_s": main["reference_s"],
            "reference_runs": main["reference_runs"], "speedup": main["speedup"], "fixtures": fixtures,
            "decode_only_s": main["decode_only_s"],
            "check": {**main["check"], "ok": ok, "text": main["check"]["text"] + extra},
            "load_average": os.getloadavg()[0]}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.video_frames", description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--gop", type=int, default=125)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args(argv)
    result = row(args.runs, args.frames, args.gop)
    print(f"{result['hot_path']}: {result['input']}")
    for name, r in [("generated", result), *[(f["clip"], f) for f in result["fixtures"]]]:
        print(f"  {name:10s} ours {r['ours_s'] * 1e3:7.1f} ms, reference {r['reference_s'] * 1e3:7.1f} ms, "
              f"ratio {r['speedup']:.1f}x; decoding alone {r['decode_only_s'] * 1e3:.1f} ms")
    print(f"  check: {'OK' if result['check']['ok'] else 'FAILED'} ({result['check']['text']})")
    return result


if __name__ == "__main__":
    main()
