"""bench.metrics against plain numpy / python references, batch splits and 2-process gloo DDP."""
from __future__ import annotations

import math
import time
from datetime import timedelta

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from bench.metrics import (
    NO_PREDICTION,
    SegmentationMetric,
    confusion_matrix,
    iou_from_confusion,
    paint_regions,
)

C = 7
IGNORE = 255
ABSENT = (2, 5)  # never in target nor pred: zero union, excluded from the mean
PRED_ONLY = 4  # predicted but never in the target: IoU 0, counted in the mean


def make_dataset(seed: int = 0, n_images: int = 7) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(pred, target) label maps of varied sizes with ignore and uncovered pixels."""
    rng = np.random.default_rng(seed)
    target_classes = [c for c in range(C) if c not in ABSENT and c != PRED_ONLY]
    pred_classes = [c for c in range(C) if c not in ABSENT]
    data = []
    for i in range(n_images):
        h, w = rng.integers(5, 40, size=2)
        target = rng.choice(target_classes, size=(h, w))
        pred = np.where(rng.random((h, w)) < 0.5, target, rng.choice(pred_classes, size=(h, w)))
        target[rng.random((h, w)) < 0.1] = IGNORE
        pred[rng.random((h, w)) < 0.1] = NO_PREDICTION
        # uint8 targets as read from label PNGs, int64 otherwise
        target_t = torch.from_numpy(target.astype(np.uint8 if i % 2 else np.int64))
        data.append((torch.from_numpy(pred.astype(np.int64)), target_t))
    return data


def numpy_confusion(pred: np.ndarray, target: np.ndarray) -> np.ndarray:
    keep = target != IGNORE
    t, p = target[keep].astype(np.int64), pred[keep].astype(np.int64)
    cm = np.zeros((C, C + 1), dtype=np.int64)
    np.add.at(cm, (t, np.where(p == NO_PREDICTION, C, p)), 1)
    return cm


def pixel_reference(data) -> dict:
    """IoU etc. straight from the pixels, summed over the dataset (HF / mmseg style)."""
    pred = np.concatenate([p.numpy().ravel() for p, _ in data])
    target = np.concatenate([t.numpy().ravel().astype(np.int64) for _, t in data])
    keep = target != IGNORE
    pred, target = pred[keep], target[keep]
    iou, acc = [], []
    for c in range(C):
        inter = np.sum((target == c) & (pred == c))
        union = np.sum((target == c) | (pred == c))
        gt = np.sum(target == c)
        iou.append(inter / union if union else math.nan)
        acc.append(inter / gt if gt else math.nan)
    return {
        "miou": np.nanmean(iou),
        "iou_per_class": iou,
        "absent_classes": [c for c in range(C) if math.isnan(iou[c])],
        "unscored_classes": [],
        "pixel_acc": np.mean(pred == target),
        "mean_class_acc": np.nanmean(acc),
        "acc_per_class": acc,
        "num_pixels": len(target),
        "uncovered_pixels": int(np.sum(pred == NO_PREDICTION)),
    }


def assert_results_equal(got: dict, want: dict) -> None:
    if "confusion" in got and "confusion" in want:
        assert got["confusion"] == want["confusion"]
    got = {k: v for k, v in got.items() if k != "confusion"}
    want = {k: v for k, v in want.items() if k != "confusion"}
    assert got.keys() == want.keys()
    for key in want:
        np.testing.assert_allclose(np.asarray(got[key], float), np.asarray(want[key], float), rtol=1e-12, err_msg=key)


def batched(groups) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """One update per group: the group's images flattened and concatenated."""
    return [
        (torch.cat([p.reshape(-1) for p, _ in g]), torch.cat([t.reshape(-1).long() for _, t in g])) for g in groups
    ]


# --------------------------------------------------------------------------- confusion + IoU


def test_confusion_matrix_matches_numpy():
    for pred, target in make_dataset():
        got = confusion_matrix(pred, target, C, IGNORE)
        assert got.dtype == torch.int64 and got.shape == (C, C + 1)
        np.testing.assert_array_equal(got.numpy(), numpy_confusion(pred.numpy(), target.numpy()))


def test_iou_matches_pixel_reference():
    data = make_dataset()
    confmat = sum(confusion_matrix(p, t, C, IGNORE) for p, t in data)
    got = iou_from_confusion(confmat)
    want = pixel_reference(data)
    assert_results_equal(got, want)
    assert got["absent_classes"] == list(ABSENT)
    assert got["iou_per_class"][PRED_ONLY] == 0.0  # predicted-only class counts as 0, not skipped
    assert got["uncovered_pixels"] > 0
    assert isinstance(got["miou"], float) and isinstance(got["num_pixels"], int)


def test_uncovered_pixels_are_false_negatives_never_correct():
    target = torch.tensor([[0, 0], [1, IGNORE]])
    pred = torch.tensor([[NO_PREDICTION, 0], [NO_PREDICTION, NO_PREDICTION]])  # the ignored one is dropped
    res = iou_from_confusion(confusion_matrix(pred, target, 2, IGNORE))
    assert res["iou_per_class"] == [0.5, 0.0]  # class 0: TP 1 / GT 2; class 1: GT 1, never hit
    assert res["pixel_acc"] == pytest.approx(1 / 3)
    assert res["acc_per_class"] == [0.5, 0.0]
    assert (res["num_pixels"], res["uncovered_pixels"], res["absent_classes"]) == (3, 2, [])


def test_all_ignored_and_empty_inputs():
    target = torch.full((4, 4), IGNORE)
    assert confusion_matrix(torch.zeros(4, 4, dtype=torch.long), target, C).sum() == 0
    res = iou_from_confusion(torch.zeros(C, C + 1, dtype=torch.int64))
    assert math.isnan(res["miou"]) and math.isnan(res["pixel_acc"]) and res["absent_classes"] == list(range(C))


@pytest.mark.parametrize(
    "pred_value, target_value, bad",
    [
        (0, C, f"[{C}]"),  # target == num_classes (e.g. ADE label reduction forgotten)
        (0, -1, "[-1]"),  # negative target that is not ignore_index
        (0, 254, "[254]"),  # uint8 254 after a wrong reduction
        (C, 0, f"[{C}]"),  # pred out of range
        (-2, 0, "[-2]"),  # pred below NO_PREDICTION
    ],
)
def test_out_of_range_values_raise(pred_value, target_value, bad):
    pred, target = make_dataset(n_images=1)[0]
    target = target.long()
    pred[0, 0], target[0, 0] = pred_value, target_value
    with pytest.raises(ValueError, match=bad.replace("[", r"\[").replace("]", r"\]")):
        confusion_matrix(pred, target, C, IGNORE)
    metric = SegmentationMetric(C)
    with pytest.raises(ValueError):
        metric.update(pred, target)
    assert metric.confmat.sum() == 0  # nothing half-counted


def test_bad_arguments_raise():
    x = torch.zeros(3, 3, dtype=torch.long)
    with pytest.raises(ValueError, match="shape"):
        confusion_matrix(x, x[:2], C)
    with pytest.raises(TypeError, match="integer"):
        confusion_matrix(x.float(), x, C)
    with pytest.raises(ValueError, match="ignore_index=0"):
        confusion_matrix(x, x, C, ignore_index=0)
    with pytest.raises(ValueError, match="ignore_index=3"):
        SegmentationMetric(C, ignore_index=3)
    with pytest.raises(ValueError, match=r"\(C, C\+1\)"):
        iou_from_confusion(torch.zeros(C, C, dtype=torch.int64))


def test_confusion_matrix_under_deterministic_mode():
    g = torch.Generator().manual_seed(0)
    pred = torch.randint(0, 150, (256, 256), generator=g)
    target = torch.randint(0, 150, (256, 256), generator=g)
    want = confusion_matrix(pred, target, 150)
    torch.use_deterministic_algorithms(True)
    try:
        start = time.perf_counter()
        got = confusion_matrix(pred, target, 150)
        assert time.perf_counter() - start < 5.0  # the torchmetrics comparison mesh here: 65536 x 22500 cells
    finally:
        torch.use_deterministic_algorithms(False)
    assert torch.equal(got, want)


# --------------------------------------------------------------------------- accumulation


def test_accumulation_is_invariant_to_batch_split():
    data = make_dataset(n_images=9)
    rng = np.random.default_rng(1)
    splits = {"one_by_one": [[d] for d in data], "all_at_once": [data]}
    for k in range(3):
        order = rng.permutation(len(data))
        cuts = np.sort(rng.choice(np.arange(1, len(data)), size=k + 1, replace=False))
        splits[f"random{k}"] = [[data[i] for i in part] for part in np.split(order, cuts)]

    want = np.sum([numpy_confusion(p.numpy(), t.numpy()) for p, t in data], axis=0)
    for name, groups in splits.items():
        metric = SegmentationMetric(C)
        for pred, target in batched(groups):
            metric.update(pred, target)
        np.testing.assert_array_equal(metric.confmat.numpy(), want, err_msg=name)
        assert_results_equal(metric.compute(), pixel_reference(data))


def test_metric_reset_and_forward():
    data = make_dataset(n_images=2)
    metric = SegmentationMetric(C)
    batch_result = metric(*data[0])  # forward: this batch's dict, state still accumulates
    assert_results_equal(batch_result, pixel_reference(data[:1]))
    metric.update(*data[1])
    assert_results_equal(metric.compute(), pixel_reference(data))
    metric.reset()
    assert metric.confmat.sum() == 0


# --------------------------------------------------------------------------- paint_regions


def loop_paint(probs: np.ndarray, masks: np.ndarray, uncovered: str):
    """Literal per-pixel reference. For "nearest" returns, per uncovered pixel, the set of
    predictions of all covered pixels at minimal distance (scipy breaks distance ties its way)."""
    R, C_ = probs.shape
    _, H, W = masks.shape
    pred = np.full((H, W), NO_PREDICTION, dtype=np.int64)
    coverage = np.zeros((H, W), dtype=np.int64)
    for y in range(H):
        for x in range(W):
            regions = [r for r in range(R) if masks[r, y, x]]
            coverage[y, x] = len(regions)
            if not regions:
                continue
            mean = [sum(probs[r, c] for r in regions) / len(regions) for c in range(C_)]
            best = 0
            for c in range(1, C_):
                if mean[c] > mean[best]:  # strict: ties stay with the lower index
                    best = c
            pred[y, x] = best
    if uncovered == "background":
        pred[coverage == 0] = 0
    candidates = {}
    if uncovered == "nearest":
        covered = [(y, x) for y in range(H) for x in range(W) if coverage[y, x]]
        for y in range(H):
            for x in range(W):
                if coverage[y, x] == 0 and covered:
                    dist2 = [(y - v) ** 2 + (x - u) ** 2 for v, u in covered]
                    candidates[y, x] = {int(pred[covered[i]]) for i, d in enumerate(dist2) if d == min(dist2)}
    return pred, coverage, candidates


def random_regions(seed: int, R: int, C_: int, H: int, W: int):
    """Overlapping random rectangles (some uncovered pixels); probs on a 1/64 grid, so the
    sums are exact in fp32 and argmax ties occur and must resolve to the lower index."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((R, H, W), dtype=bool)
    for r in range(R):
        y0, x0 = rng.integers(0, H - 1), rng.integers(0, W - 1)
        masks[r, y0 : y0 + rng.integers(1, H // 2 + 1), x0 : x0 + rng.integers(1, W // 2 + 1)] = True
    masks[:, : H // 3, : W // 3] = False  # a guaranteed uncovered block
    probs = np.stack([rng.multinomial(64, [1 / C_] * C_) / 64 for _ in range(R)]).astype(np.float32)
    return probs, masks


@pytest.mark.parametrize("uncovered", ["miss", "background", "nearest"])
def test_paint_regions_matches_pixel_loop(uncovered):
    probs, masks = random_regions(seed=3, R=6, C_=4, H=9, W=11)
    assert (masks.sum(0) > 1).any() and (masks.sum(0) == 0).any()
    pred, coverage = paint_regions(torch.from_numpy(probs), torch.from_numpy(masks), uncovered)
    want_pred, want_cov, candidates = loop_paint(probs, masks, uncovered)
    assert pred.dtype == torch.int64 and pred.shape == (9, 11)
    np.testing.assert_array_equal(coverage.numpy(), want_cov)
    if uncovered == "nearest":
        assert candidates and (pred >= 0).all()
        for (y, x), options in candidates.items():
            assert int(pred[y, x]) in options, (y, x)
        covered = want_cov > 0
        np.testing.assert_array_equal(pred.numpy()[covered], want_pred[covered])
    else:
        np.testing.assert_array_equal(pred.numpy(), want_pred)


def test_paint_regions_ties_and_nearest_exact():
    masks = torch.tensor([[[1, 1, 0, 0, 0]], [[0, 1, 0, 0, 0]], [[0, 0, 0, 0, 1]]], dtype=torch.bool)  # (3,1,5)
    probs = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.4, 0.4]])
    # px0: r0 -> 0; px1: mean(r0, r1) = [.5, .5, 0], a tie -> 0; px2, px3 uncovered; px4: [0, .4, .4] -> 1
    pred, cov = paint_regions(probs, masks)
    assert pred.tolist() == [[0, 0, NO_PREDICTION, NO_PREDICTION, 1]]
    assert cov.tolist() == [[1, 2, 0, 0, 1]]
    pred, _ = paint_regions(probs, masks, "nearest")  # px2 is nearest to px1, px3 to px4
    assert pred.tolist() == [[0, 0, 0, 1, 1]]
    pred, _ = paint_regions(probs, masks, "background")
    assert pred.tolist() == [[0, 0, 0, 0, 1]]


def test_paint_regions_chunking_and_dtype_do_not_change_result():
    probs, masks = random_regions(seed=5, R=20, C_=6, H=30, W=40)
    probs_t, masks_t = torch.from_numpy(probs), torch.from_numpy(masks)
    full, cov = paint_regions(probs_t, masks_t)
    chunked, cov2 = paint_regions(probs_t, masks_t, pixels_per_chunk=7)
    half, _ = paint_regions(probs_t.half(), masks_t)  # 1/64 grid is exact in fp16 too
    assert torch.equal(full, chunked) and torch.equal(cov, cov2) and torch.equal(full, half)


def test_paint_regions_without_regions():
    probs, masks = torch.zeros(0, 3), torch.zeros(0, 2, 3, dtype=torch.bool)
    assert (paint_regions(probs, masks)[0] == NO_PREDICTION).all()
    assert (paint_regions(probs, masks, "nearest")[0] == NO_PREDICTION).all()  # nothing to copy
    assert (paint_regions(probs, masks, "background")[0] == 0).all()


def test_paint_regions_bad_arguments():
    probs, masks = torch.rand(2, 3), torch.ones(2, 4, 4, dtype=torch.bool)
    with pytest.raises(ValueError, match="miss, nearest, background"):
        paint_regions(probs, masks, "zero")
    with pytest.raises(TypeError, match="bool"):
        paint_regions(probs, masks.float())
    with pytest.raises(ValueError, match=r"\(R, C\)"):
        paint_regions(probs[:1], masks)
    with pytest.raises(ValueError, match="NaN"):
        paint_regions(torch.tensor([[math.nan, 0, 0], [0, 1, 0]]), masks)


def test_painted_misses_are_counted_as_uncovered():
    probs = torch.tensor([[0.1, 0.9]])
    masks = torch.tensor([[[True, False], [False, False]]])
    pred, _ = paint_regions(probs, masks)
    target = torch.tensor([[1, 1], [0, IGNORE]])
    cm = confusion_matrix(pred, target, 2)
    assert cm.tolist() == [[0, 0, 1], [0, 1, 1]]


# --------------------------------------------------------------------------- DDP (gloo, 2 CPU processes)


def _ddp_worker(rank: int, world_size: int, init_file: str, shards: dict, out_dir: str) -> None:
    dist.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size, timeout=timedelta(seconds=60)
    )
    try:
        out = {}
        for name, per_rank in shards.items():
            metric = SegmentationMetric(C)
            for pred, target in per_rank[rank]:
                metric.update(pred, target)
            local = metric.confmat.clone()
            results = metric.compute()  # syncs, then restores the local state
            assert torch.equal(metric.confmat, local), "local state not restored after compute"
            metric.sync()
            synced = metric.confmat.clone()
            metric.unsync()
            out[name] = {"synced": synced, "results": results}
        torch.save(out, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_ddp_sync_equals_single_process(tmp_path):
    data = make_dataset(n_images=6)
    shards = {
        "uneven_3_vs_1": [data[:3] + data[4:5] + data[5:], data[3:4]],  # 5 updates vs 1
        "one_rank_empty": [data, []],  # rank 1 never calls update
        "uneven_batches": [batched([data[:2], data[2:3]]), batched([data[3:]])],
    }
    single = SegmentationMetric(C)
    for pred, target in data:
        single.update(pred, target)
    want = single.confmat

    ctx = mp.spawn(_ddp_worker, args=(2, str(tmp_path / "pg"), shards, str(tmp_path)), nprocs=2, join=False)
    deadline = time.monotonic() + 120
    while not ctx.join(timeout=1):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail("DDP metric test timed out: a collective hung")

    for rank in range(2):
        out = torch.load(tmp_path / f"rank{rank}.pt")
        for name in shards:
            assert torch.equal(out[name]["synced"], want), (rank, name)
            assert_results_equal(out[name]["results"], single.compute())
