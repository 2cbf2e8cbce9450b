"""A FAISS index over region vectors with a region -> image map; an image scores its best region.

    index = RegionIndex.build(vectors (N, d), image_of (N,) int, keys [M], IndexParams())
    scores = index.image_scores(queries (Q, d))   # (Q, M) float32, max over each image's regions
    index.save(directory); RegionIndex.load(directory)

The paper's score of a database image for a query vector q is max over the image's regions r of
q . r, a raw inner product (the released code does not normalise; official-code-spec §7.2).

  kind        flat   ``IndexFlatIP``: exact. With ``k=None`` every region is scored by one BLAS
                     product over the vectors the index stores (30x faster than a FAISS search
                     with k = all regions), so the image ranking is exact: use it for benchmark
                     numbers.
              ivfpq  ``IVF{nlist},PQ{pq_m}x{pq_bits}`` (inverted lists over k-means cells, product-
                     quantised codes; inner-product metric) for collections too large for memory
                     or exhaustive search: trained on up to ``train_size`` vectors (a seeded
                     sample), searched in ``nprobe`` cells. Scores are approximate.
  similarity  ip     raw inner product (the paper)
              cosine vectors and queries L2-normalised first (zero vectors stay zero)
  k           regions retrieved per query (FAISS search); None = all (exact for flat). An image
              none of whose regions is retrieved scores -inf: ranked last, tied.

FAISS takes float32 C-contiguous arrays only: float16 shard features are converted here.
Regions are stored sorted by image (stable), so per-image maxima are ``np.maximum.reduceat``.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from bench.atomic import atomic_path

logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # it logs every CPU feature probe at INFO
KINDS = ("flat", "ivfpq")
SIMILARITIES = ("ip", "cosine")


@dataclass(frozen=True)
class IndexParams:
    kind: str = "flat"
    similarity: str = "ip"
    nlist: int = 1024        # ivfpq: k-means cells
    pq_m: int = 64           # ivfpq: sub-quantisers (must divide the dimension)
    pq_bits: int = 8         # ivfpq: bits per sub-quantiser code
    nprobe: int = 32         # ivfpq: cells searched per query
    train_size: int = 262144  # ivfpq: vectors sampled for training
    seed: int = 0

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"retrieval.index={self.kind!r} is unknown; valid: {', '.join(KINDS)}")
        if self.similarity not in SIMILARITIES:
            raise ValueError(f"retrieval.similarity={self.similarity!r} is unknown; valid: {', '.join(SIMILARITIES)}")


def as_float32(vectors: np.ndarray, normalise: bool = False) -> np.ndarray:
    """(N, d) any float -> float32 C-contiguous (FAISS rejects float16 and strided arrays);
    L2-normalised rows when ``normalise`` (zero rows stay zero)."""
    out = np.ascontiguousarray(vectors, dtype=np.float32)
    if out.ndim != 2:
        raise ValueError(f"expected an (N, d) array of vectors, got shape {out.shape}")
    if not np.isfinite(out).all():
        raise ValueError("vectors contain NaN or inf")
    if normalise:
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        out = np.ascontiguousarray(out / np.where(norms > 0, norms, 1))
    return out


def _make_index(dim: int, vectors: np.ndarray, params: IndexParams):
    import faiss

    if params.kind == "flat":
        return faiss.IndexFlatIP(dim)
    needed = max(params.nlist, 2 ** params.pq_bits)
    if dim % params.pq_m:
        raise ValueError(f"ivfpq: retrieval.pq_m={params.pq_m} must divide the vector dimension {dim} "
                         f"(e.g. retrieval.pq_m={next(m for m in (64, 32, 16, 8, 4, 2, 1) if dim % m == 0)})")
    if len(vectors) < needed:
        raise ValueError(f"ivfpq needs at least max(nlist, 2**pq_bits) = {needed} vectors to train; the database "
                         f"has {len(vectors)}: use retrieval.index=flat or lower retrieval.nlist / retrieval.pq_bits")
    index = faiss.index_factory(dim, f"IVF{params.nlist},PQ{params.pq_m}x{params.pq_bits}",
                                faiss.METRIC_INNER_PRODUCT)
    faiss.downcast_index(index).do_polysemous_training = False  # Hamming pre-filter codes: unused here, slow
    rng = np.random.default_rng(params.seed)
    sample = vectors if len(vectors) <= params.train_size else \
        vectors[np.sort(rng.choice(len(vectors), params.train_size, replace=False))]
    index.train(np.ascontiguousarray(sample))
    return index


class RegionIndex:
    """A FAISS index whose i-th vector is a region of image ``keys[image_of[i]]``."""

    def __init__(self, index, image_of: np.ndarray, keys: list[str], params: IndexParams, info: dict):
        self.index, self.image_of, self.keys, self.params, self.info = index, image_of, keys, params, info
        counts = np.bincount(image_of, minlength=len(keys))
        self.offsets = np.concatenate([[0], np.cumsum(counts)])  # regions of image j: offsets[j]:offsets[j+1]
        self._present = counts > 0
        self._nprobe()

    def _nprobe(self) -> None:
        if self.params.kind == "ivfpq":
            import faiss

            faiss.extract_index_ivf(self.index).nprobe = self.params.nprobe

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    @classmethod
    def build(cls, vectors: np.ndarray, image_of: np.ndarray, keys: list[str],
              params: IndexParams = IndexParams(), source: str = "") -> "RegionIndex":
        """Index ``vectors`` (N, d) of images ``image_of`` (N,) in [0, len(keys)); ``source``
        identifies the database (saved, so a stale index can be detected)."""
        image_of = np.asarray(image_of, dtype=np.int64)
        if len(image_of) != len(vectors) or (len(image_of) and not 0 <= image_of.min() <= image_of.max() < len(keys)):
            raise ValueError(f"image_of must give an image index in [0, {len(keys)}) for each of the {len(vectors)} vectors")
        start = time.perf_counter()
        order = np.argsort(image_of, kind="stable")
        if (order != np.arange(len(order))).any():  # no copy of an already sorted (large) array
            vectors = np.asarray(vectors)[order]
        vectors = as_float32(vectors, normalise=params.similarity == "cosine")
        index = _make_index(vectors.shape[1], vectors, params)
        index.add(vectors)
        info = {"source": source, "dim": int(vectors.shape[1]), "ntotal": int(index.ntotal), "images": len(keys),
                "build_seconds": round(time.perf_counter() - start, 4), "faiss": _faiss_version()}
        return cls(index, image_of[order], list(keys), params, info)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """FAISS search: (Q, k) similarities, descending, and (Q, k) region indices (-1 = none)."""
        queries = as_float32(queries, normalise=self.params.similarity == "cosine")
        return self.index.search(queries, min(k, self.ntotal))

    def image_scores(self, queries: np.ndarray, k: int | None = None, max_elements: int = 1 << 26) -> np.ndarray:
        """(Q, d) -> (Q, M) float32: each image's best region similarity (-inf: none retrieved)."""
        queries = as_float32(queries, normalise=self.params.similarity == "cosine")
        out = np.full((len(queries), len(self.keys)), -np.inf, dtype=np.float32)
        if self.ntotal == 0:
            return out
        exhaustive = k is None and self.params.kind == "flat"
        width = self.ntotal if exhaustive or k is None else min(k, self.ntotal)
        batch = max(1, max_elements // width)
        starts = self.offsets[:-1][self._present]
        for b in range(0, len(queries), batch):
            q = queries[b:b + batch]
            if exhaustive:
                scores = q @ self.vectors().T  # (B, N), regions in image order
                out[b:b + batch, self._present] = np.maximum.reduceat(scores, starts, axis=1)
            else:
                scores, regions = self.index.search(q, width)
                rows, cols = np.nonzero(regions >= 0)
                np.maximum.at(out[b:b + batch], (rows, self.image_of[regions[rows, cols]]), scores[rows, cols])
        return out

    def vectors(self) -> np.ndarray:
        """(N, d) float32 view of a flat index's stored vectors (no copy)."""
        import faiss

        if self.params.kind != "flat":
            raise ValueError("only a flat index stores its vectors exactly")
        return faiss.rev_swig_ptr(self.index.get_xb(), self.ntotal * self.index.d).reshape(self.ntotal, self.index.d)

    # ------------------------------------------------------------------------- files
    def save(self, directory: str | Path) -> Path:
        """index.faiss, image_of.npy, keys.json, meta.json in ``directory`` (replaced atomically)."""
        import faiss

        directory = Path(directory)
        directory.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(directory) as tmp:
            tmp.mkdir()
            faiss.write_index(self.index, str(tmp / "index.faiss"))
            np.save(tmp / "image_of.npy", self.image_of)
            (tmp / "keys.json").write_text(json.dumps(self.keys))
            (tmp / "meta.json").write_text(json.dumps({"params": asdict(self.params), **self.info}, indent=1))
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> "RegionIndex":
        import faiss

        directory = Path(directory)
        if not (directory / "meta.json").is_file():
            raise FileNotFoundError(f"no region index in {directory} (meta.json missing)")
        meta = json.loads((directory / "meta.json").read_text())
        params = IndexParams(**meta.pop("params"))
        index = faiss.read_index(str(directory / "index.faiss"))
        image_of = np.load(directory / "image_of.npy", allow_pickle=False)
        keys = json.loads((directory / "keys.json").read_text())
        if index.ntotal != len(image_of) or index.ntotal != meta["ntotal"]:
            raise ValueError(f"region index in {directory} is inconsistent ({index.ntotal} vectors, "
                             f"{len(image_of)} region->image entries): delete the directory to rebuild it")
        return cls(index, image_of, keys, params, meta)


def _faiss_version() -> str:
    import faiss

    return faiss.__version__
