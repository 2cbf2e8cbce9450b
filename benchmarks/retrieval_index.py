"""Region index build time and query latency at scale: 1,000,000 random region vectors of dim 1024.

    python -m benchmarks.retrieval_index [--n 1000000] [--dim 1024] [--regions-per-image 100]
                                         [--queries 50] [--nlist 1024] [--pq-m 64] [--nprobe 32] [--out FILE]

For each index kind of ``bench.retrieval.index`` (flat = exact IndexFlatIP; ivfpq = IVF + PQ with
the config defaults) it reports the build time (training + adding) and, per query:

  top-k     a FAISS search for the k=100 best regions, one query at a time (interactive search)
  images    ``RegionIndex.image_scores``, one query at a time: the score of every image
            (flat: every region scored, the exact ranking the benchmark metrics use; ivfpq:
            the regions of the nprobe nearest cells)
  batch     ``image_scores`` for all queries in one call, per query (evaluation throughput)

and two recalls of the ivfpq top-100: against the exact top-100 regions (for i.i.d. Gaussian
vectors every region is about equally far from a query, so IVF cells cannot help: ~nprobe/nlist),
and of planted near-duplicates (a stored vector plus 10% noise, i.e. the same object seen again:
is its region in the top 100?). Vectors and queries are i.i.d. Gaussian (seeded), generated in
float32 (4 GB at 1M x 1024); the flat index holds its own copy: peak memory about 8.5 GB.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import time

import numpy as np

from bench.retrieval.index import IndexParams, RegionIndex


def random_vectors(n: int, dim: int, seed: int, chunk: int = 65536) -> np.ndarray:
    """(n, dim) float32 standard normal, generated in chunks (no float64 copy of the whole array)."""
    rng = np.random.default_rng(seed)
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, chunk):
        out[start:start + chunk] = rng.standard_normal((min(chunk, n - start), dim), dtype=np.float32)
    return out


def per_query(fn, queries: np.ndarray) -> float:
    """Mean seconds of fn(q[None]) over the queries (after one warm-up call)."""
    fn(queries[:1])
    start = time.perf_counter()
    for q in queries:
        fn(q[None])
    return (time.perf_counter() - start) / len(queries)


def bench_kind(vectors, image_of, keys, queries, params: IndexParams, exact_top=None, planted=None) -> dict:
    start = time.perf_counter()
    index = RegionIndex.build(vectors, image_of, keys, params)
    build = time.perf_counter() - start
    row = {"kind": params.kind, "build_seconds": build,
           "topk_ms": 1000 * per_query(lambda q: index.search(q, 100), queries),
           "images_ms": 1000 * per_query(lambda q: index.image_scores(q), queries)}
    start = time.perf_counter()
    index.image_scores(queries)
    row["batch_ms"] = 1000 * (time.perf_counter() - start) / len(queries)
    _, top = index.search(queries, 100)
    if exact_top is not None:
        # RegionIndex sorts regions by image; image_of here is already sorted, so ids are comparable
        row["recall_at_100"] = float(np.mean([len(set(a) & set(b)) / 100 for a, b in zip(top, exact_top)]))
    if planted is not None:
        sources, near = planted
        _, found = index.search(near, 100)
        row["planted_recall_at_100"] = float(np.mean([s in f for s, f in zip(sources, found)]))
    return row, top


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.retrieval_index", description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--regions-per-image", type=int, default=100)
    parser.add_argument("--queries", type=int, default=50)
    parser.add_argument("--nlist", type=int, default=IndexParams.nlist)
    parser.add_argument("--pq-m", type=int, default=IndexParams.pq_m)
    parser.add_argument("--nprobe", type=int, default=IndexParams.nprobe)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="also write the results as JSON here")
    args = parser.parse_args(argv)

    import faiss

    start = time.perf_counter()
    vectors = random_vectors(args.n, args.dim, args.seed)
    queries = random_vectors(args.queries, args.dim, args.seed + 1)
    image_of = np.arange(args.n) // args.regions_per_image
    keys = [f"img{i:07d}" for i in range(int(image_of[-1]) + 1)]
    sources = np.random.default_rng(args.seed + 2).choice(args.n, args.queries, replace=False)
    near = vectors[sources] + 0.1 * random_vectors(args.queries, args.dim, args.seed + 3)
    print(f"{args.n} x {args.dim} vectors, {len(keys)} images, {args.queries} queries "
          f"(generated in {time.perf_counter() - start:.1f} s); faiss {faiss.__version__}, "
          f"{faiss.omp_get_max_threads()} threads, {os.cpu_count()} CPUs, {platform.processor() or platform.machine()}")
    rows = []
    flat, exact_top = bench_kind(vectors, image_of, keys, queries, IndexParams(kind="flat"), planted=(sources, near))
    rows.append(flat)
    print(flat, flush=True)
    gc.collect()
    ivfpq, _ = bench_kind(vectors, image_of, keys, queries,
                          IndexParams(kind="ivfpq", nlist=args.nlist, pq_m=args.pq_m, nprobe=args.nprobe), exact_top,
                          (sources, near))
    ivfpq.update(nlist=args.nlist, pq_m=args.pq_m, nprobe=args.nprobe)
    rows.append(ivfpq)
    print(ivfpq, flush=True)

    print("\n| index | build s | top-100 search ms/query | all-image scores ms/query | batched ms/query "
          "| recall@100 | near-duplicate recall@100 |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['kind']} | {r['build_seconds']:.1f} | {r['topk_ms']:.1f} | {r['images_ms']:.1f} | "
              f"{r['batch_ms']:.1f} | {r.get('recall_at_100', 1.0):.3f} | {r['planted_recall_at_100']:.2f} |")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"n": args.n, "dim": args.dim, "queries": args.queries, "rows": rows}, f, indent=1)
    return rows


if __name__ == "__main__":
    main()
