"""Retrieval metrics over one query's scores of every database image, as the paper reports them.

    average_precision(scores (N,), positives (N,) bool)  -> float   (= sklearn's, ties grouped)
    precision_at_k(scores (N,), positives (N,) bool, k)  -> float   (positives in the top k) / k
    summarize(per_query, positives_per_class, ...)       -> macro mAP and P@50 + diagnostics

AP is non-interpolated step-wise AP, sum_n (R_n - R_{n-1}) P_n over the distinct score
thresholds, tied scores forming one threshold: exactly ``sklearn.metrics.average_precision_score``
(what the released code calls), for any sign of score. P@k ranks by score, descending, then by
database index, ascending (the tie rule), and divides by k even when fewer than k images exist
(as the released code's torchmetrics call). Both are computed here, not with torchmetrics: from
1.8 on it counts every image with a score <= 0 as not retrieved, and raw inner products are
often negative (pitfalls §2.3). Scores may be -inf (an image the index did not reach); NaN is an
error. A query without any positive has no AP: ``ValueError``.

Averaging, as the paper: per query, then the mean over a class's queries, then over classes.
"""
from __future__ import annotations

import numpy as np

PRECISION_K = 50


def _check(scores: np.ndarray, positives: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scores, positives = np.asarray(scores, dtype=np.float64), np.asarray(positives, dtype=bool)
    if scores.shape != positives.shape or scores.ndim != 1:
        raise ValueError(f"scores {scores.shape} and positives {positives.shape} must be equal 1-d shapes")
    if np.isnan(scores).any():
        raise ValueError("scores contain NaN")
    return scores, positives


def ranking(scores: np.ndarray) -> np.ndarray:
    """Database indices, best first: score descending, then index ascending."""
    scores = np.asarray(scores, dtype=np.float64)
    return np.lexsort((np.arange(len(scores)), -scores))


def average_precision(scores: np.ndarray, positives: np.ndarray) -> float:
    scores, positives = _check(scores, positives)
    total = int(positives.sum())
    if total == 0:
        raise ValueError("average precision of a query without any positive database image is undefined")
    order = ranking(scores)
    ranked, hits = scores[order], np.cumsum(positives[order])
    last = np.flatnonzero(np.append(ranked[1:] != ranked[:-1], True))  # last index of each tie group
    precision = hits[last] / (last + 1)
    recall = hits[last] / total
    return float(np.sum(np.diff(recall, prepend=0.0) * precision))


def precision_at_k(scores: np.ndarray, positives: np.ndarray, k: int = PRECISION_K) -> float:
    scores, positives = _check(scores, positives)
    return float(positives[ranking(scores)[:k]].sum() / k)


def summarize(per_query: list[dict], positives_per_class: dict[str, int], num_images: int,
              k: int = PRECISION_K) -> dict:
    """Macro mAP and P@k from per-query rows {"class", "ap", "precision"}.

    Also: per-class values; ``classes_under_k_positives`` (P@k cannot reach 1 there);
    ``max_precision_at_k``, the best macro P@k these positive counts allow; ``chance_map``, the
    macro AP of a random ranking (each class's prevalence).
    """
    classes = sorted({row["class"] for row in per_query}, key=list(positives_per_class).index)
    ap = {c: float(np.mean([r["ap"] for r in per_query if r["class"] == c])) for c in classes}
    prec = {c: float(np.mean([r["precision"] for r in per_query if r["class"] == c])) for c in classes}
    return {
        "map": float(np.mean(list(ap.values()))) if ap else float("nan"),
        f"precision_at_{k}": float(np.mean(list(prec.values()))) if prec else float("nan"),
        "ap_per_class": ap,
        f"precision_at_{k}_per_class": prec,
        "queries_per_class": {c: sum(r["class"] == c for r in per_query) for c in classes},
        "positives_per_class": {c: positives_per_class[c] for c in classes},
        f"classes_under_{k}_positives": {c: positives_per_class[c] for c in classes if positives_per_class[c] < k},
        f"max_precision_at_{k}": float(np.mean([min(positives_per_class[c], k) / k for c in classes])) if classes else float("nan"),
        "chance_map": float(np.mean([positives_per_class[c] / num_images for c in classes])) if classes else float("nan"),
    }
