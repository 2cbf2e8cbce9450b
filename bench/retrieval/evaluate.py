"""One-shot object retrieval on COCO-format data (the paper's Table 8), as a recipe.

    python -m bench.extract experiment=table8_retrieval   # query vectors + database vectors (the backbone runs here)
    python eval.py experiment=table8_retrieval            # index (built once, saved), search, mAP / P@50, table
    python -m bench.retrieval experiment=table8_retrieval # both

Both entry points hand a config with ``task: retrieval`` to this module. Per table cell:

  1. queries    ``retrieval.queries_per_class`` ground-truth objects per category from
                ``retrieval.query_split``, one per image, chosen from ``retrieval.query_seed``
                (``bench.retrieval.queries``) and saved as a query file shared by every method.
  2. vectors    per ``retrieval.method``:
                  region  query = the GT mask's pooled feature (backbone, ``pooling.mode``);
                          database = the region shards of ``dataset.val_split`` (``bench.extract``)
                  cls     query as region; database = the backbone's class token of each image
                          (the paper's "DINOv2" baseline)
                  crop    query = class token of a crop around the object (its box grown by
                          ``crop_margin``, longer side resized to ``crop_size``); database as cls
                          (the paper's "CLIP-crop")
  3. index      ``bench.retrieval.index``: FAISS over the database vectors with a vector -> image map;
                an image's score is its best vector's similarity. Saved; reloaded while the
                database and the index settings are unchanged.
  4. metrics    ``bench.retrieval.metrics``: AP and P@50 per query over every database image,
                averaged per category, then over categories. A database image is a positive of
                a category if it has any annotation of it (crowd included: the object is there).

Files (``retrieval.dir`` = data/retrieval/<dataset>)::

    queries-<digest>.json                                 the query file
    <method>_<backbone>_<pooling>-<digest>/queries.npy    (Q, d) float32, rows in query-file order
    <method>_<backbone>_<pooling>-<digest>/database.npz   cls / crop: keys (M,), vectors (M, d)
    <method>_<backbone>_<pooling>-<digest>/index_<kind>_<similarity>-<digest>/   (bench.retrieval.index)

Results: ``<results_root>/<experiment>/<row>/<column>/{metrics.json, per_query.json, config.yaml}``.
"""
from __future__ import annotations

import hashlib
import logging
import sys
import time
from pathlib import Path

import numpy as np
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from bench import shards
from bench.atomic import atomic_file, digest
from bench.config import cell_configs, save_config
from bench.extraction import Extractor, process_index, process_split
from bench.images import to_rgb8
from bench.progress import bar_options
from bench.retrieval.index import IndexParams, RegionIndex
from bench.retrieval.metrics import PRECISION_K, average_precision, precision_at_k, summarize
from bench.retrieval.queries import (Query, global_vector, load_queries, query_vectors, save_queries,
                                    select_queries)
from datamodules.coco import annotation_file, load_coco
from datamodules.datasets import dataset_items, layout, prepare_dataset, split_name
from datamodules.voc import load_image_for_label

log = logging.getLogger("regionbench.retrieval")
METHODS = ("region", "cls", "crop")


def _digest(*values) -> str:
    return digest(list(values))


def _plain(node) -> dict:
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node


def method(cfg: DictConfig) -> str:
    if cfg.retrieval.method not in METHODS:
        raise ValueError(f"retrieval.method={cfg.retrieval.method!r} is unknown; valid: {', '.join(METHODS)}")
    return cfg.retrieval.method


# ----------------------------------------------------------------------------- files
def query_file(cfg: DictConfig) -> Path:
    r = cfg.retrieval
    source = annotation_file(cfg.dataset.root, r.query_split)
    stat = source.stat()
    key = _digest(str(source), stat.st_size, stat.st_mtime_ns, r.queries_per_class, r.query_seed, r.min_query_area)
    return Path(r.dir) / f"queries-{key}.json"


def vectors_dir(cfg: DictConfig) -> Path:
    """Query (and cls/crop database) vectors of this method, backbone and query file."""
    r, b = cfg.retrieval, cfg.backbone
    crop = [r.crop_margin, r.crop_size] if method(cfg) == "crop" else None
    key = _digest(method(cfg), b.name, _plain(b.params.get(b.name, {})), cfg.pooling.mode, crop,
                  query_file(cfg).name, _plain(cfg.dataset))
    return Path(r.dir) / f"{method(cfg)}_{b.name}_{cfg.pooling.mode}-{key}"


def index_params(cfg: DictConfig) -> IndexParams:
    r = cfg.retrieval
    return IndexParams(kind=r.index, similarity=r.similarity, nlist=r.nlist, pq_m=r.pq_m, pq_bits=r.pq_bits,
                       nprobe=r.nprobe, seed=cfg.seed)


# ----------------------------------------------------------------------------- vectors
def prepare_queries(cfg: DictConfig) -> tuple[list[Query], dict]:
    """The cell's query file: loaded, or selected and saved."""
    path = query_file(cfg)
    if not path.is_file():
        r = cfg.retrieval
        source = annotation_file(cfg.dataset.root, r.query_split)
        queries, shortfall = select_queries(load_coco(source), r.queries_per_class, r.query_seed, r.min_query_area)
        save_queries(path, queries, shortfall, {"annotations": str(source), "split": r.query_split,
                                                "per_class": r.queries_per_class, "seed": r.query_seed,
                                                "min_area": r.min_query_area})
        log.info("%s: %d queries selected%s", path, len(queries), f"; short: {shortfall}" if shortfall else "")
    return load_queries(path)


def database_globals(cfg: DictConfig, extractor) -> tuple[list[str], np.ndarray]:
    """(keys, (M, d) class tokens) of the database split's images."""
    keys, vectors = [], []
    items = dataset_items(cfg.dataset, cfg.dataset.val_split)
    load_label = layout(cfg.dataset).load_label
    for item in tqdm(items, desc="database vectors", unit="img", disable=not cfg.extract.progress, file=sys.stdout,
                     **bar_options()):
        rgb = to_rgb8(load_image_for_label(item.image_path, load_label(item.label_path).shape))
        keys.append(item.id)
        vectors.append(global_vector(extractor.backbone, rgb))
    return keys, np.stack(vectors).astype(np.float32)


def _save_npy(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as f:
        np.save(f, array, allow_pickle=False)


def extract_cell(cfg: DictConfig, task, index: int = 0, count: int = 1) -> dict:
    """Everything of one cell that needs the backbone: query vectors and database vectors."""
    prepare_dataset(cfg.dataset)
    queries, _ = prepare_queries(cfg)
    extractor = Extractor(cfg, task)
    out, directory = {}, vectors_dir(cfg)
    if method(cfg) == "region":
        out["database"] = process_split(cfg, extractor, cfg.dataset.val_split, index, count)
    if index != 0:  # other processes only write their region shards
        return out
    if not (directory / "queries.npy").is_file():
        r = cfg.retrieval
        crop = (r.crop_margin, r.crop_size) if method(cfg) == "crop" else None
        _save_npy(directory / "queries.npy", query_vectors(queries, cfg.dataset.root, r.query_split, extractor,
                                                           cfg.pooling.mode, crop, cfg.extract.progress))
    if method(cfg) != "region" and not (directory / "database.npz").is_file():
        keys, vectors = database_globals(cfg, extractor)
        with atomic_file(directory / "database.npz") as f:
            np.savez(f, keys=np.array(keys), vectors=vectors)
    out["vectors"] = str(directory)
    return out


def extract_retrieval(cfg: DictConfig, task) -> dict[str, dict]:
    """``python -m bench.extract`` for a retrieval experiment: every selected cell."""
    index, count = process_index(cfg)
    return {cell: extract_cell(ccfg, task, index, count) for cell, ccfg in cell_configs(cfg).items()}


# ----------------------------------------------------------------------------- database and index
def read_region_shards(split_dir: Path) -> tuple[list[dict], dict]:
    """Every sample of a shard set in shard order ({"key", "feats", "rle", "meta"}), and its manifest."""
    samples, manifest = shards.read_split(split_dir, verify="size", fields=("feats", "rle", "meta"))
    return list(samples), manifest


def load_database(cfg: DictConfig) -> tuple[np.ndarray, np.ndarray, list[str], str, dict]:
    """(vectors (N, d), image_of (N,), keys (M,), source id, manifest or {})."""
    hint = f"run: python -m bench.extract experiment={cfg.experiment}" + (f" cell={cfg.cell}" if cfg.cell else "")
    if method(cfg) == "region":
        split_dir = Path(cfg.extract.shard_dir) / split_name(cfg.dataset.val_split)
        try:
            samples, manifest = read_region_shards(split_dir)
        except shards.ShardError as err:
            raise shards.ShardError(f"{err}\nExtract first: {hint}") from None
        dim = manifest["feature_dim"]
        vectors = np.concatenate([s["feats"] for s in samples]) if samples else np.zeros((0, dim), np.float16)
        image_of = np.repeat(np.arange(len(samples)), [len(s["feats"]) for s in samples])
        source = _digest([s["sha256"] for s in manifest["shards"]])
        return vectors, image_of, [s["key"] for s in samples], source, manifest
    path = vectors_dir(cfg) / "database.npz"
    if not path.is_file():
        raise FileNotFoundError(f"no database vectors at {path}: {hint}")
    with np.load(path, allow_pickle=False) as data:
        keys, vectors = [str(k) for k in data["keys"]], data["vectors"]
    return vectors, np.arange(len(keys)), keys, hashlib.sha256(path.read_bytes()).hexdigest()[:16], {}


def load_or_build_index(cfg: DictConfig) -> tuple[RegionIndex, bool, dict]:
    """(the index, whether it was loaded from disk, the database manifest or {})."""
    vectors, image_of, keys, source, manifest = load_database(cfg)
    params = index_params(cfg)
    directory = vectors_dir(cfg) / f"index_{params.kind}_{params.similarity}-{_digest(params.__dict__, source)}"
    if (directory / "meta.json").is_file():
        return RegionIndex.load(directory), True, manifest
    index = RegionIndex.build(vectors, image_of, keys, params, source=source)
    index.save(directory)
    log.info("built %s index of %d vectors in %.2f s: %s", params.kind, index.ntotal,
             index.info["build_seconds"], directory)
    return index, False, manifest


# ----------------------------------------------------------------------------- evaluation
def evaluate_cell(cfg: DictConfig) -> dict:
    """Search every query of the cell, score it, write metrics.json; returns the metrics."""
    from bench.config import run_dir
    from bench.runs import run_record, write_json

    start = time.perf_counter()
    queries, selection = load_queries(_must_exist(query_file(cfg), cfg))
    vectors = np.load(_must_exist(vectors_dir(cfg) / "queries.npy", cfg), allow_pickle=False)
    if len(vectors) != len(queries):
        raise ValueError(f"{vectors_dir(cfg) / 'queries.npy'} has {len(vectors)} rows for {len(queries)} queries: "
                         "delete it and re-run python -m bench.extract")
    index, loaded, manifest = load_or_build_index(cfg)
    coco = load_coco(annotation_file(cfg.dataset.root, cfg.dataset.val_split))
    by_key = {im.key: im.id for im in coco.images.values()}
    unknown = [k for k in index.keys if k not in by_key]
    if unknown:
        raise ValueError(f"database images {unknown[:5]} are not in {coco.path}: the shards belong to another dataset")
    present = {k: coco.image_categories(by_key[k]) for k in index.keys}
    names = {c["id"]: c["name"] for c in coco.categories}
    positives = {names[c]: sum(c in cats for cats in present.values()) for c in names}

    search_start = time.perf_counter()
    scores = index.image_scores(vectors, k=cfg.retrieval.search_k)  # (Q, M)
    search_seconds = time.perf_counter() - search_start
    missing = sorted({q.category for q in queries if positives[q.category] == 0})
    if missing and cfg.retrieval.no_positives == "error":
        raise ValueError(f"query categories {missing} have no positive image among the {len(index.keys)} database "
                         "images, so their AP is undefined: use a larger database or retrieval.no_positives=skip")
    per_query = []
    for q, row in zip(queries, scores):
        if q.category in missing:
            continue
        relevant = np.array([q.category_id in present[k] for k in index.keys])
        per_query.append({"key": q.key, "annotation_id": q.annotation_id, "class": q.category,
                          "ap": average_precision(row, relevant), "precision": precision_at_k(row, relevant)})
    metrics = {
        **summarize(per_query, positives, len(index.keys)),
        **run_record(cfg, 1), "method": method(cfg), "backbone": cfg.backbone.name,
        "similarity": cfg.retrieval.similarity, "index": cfg.retrieval.index,
        "num_queries": len(per_query), "database_images": len(index.keys), "database_vectors": index.ntotal,
        "vectors_per_image": index.ntotal / max(1, len(index.keys)),
        "index_build_seconds": index.info["build_seconds"], "index_loaded": loaded,
        "search_seconds_per_query": search_seconds / max(1, len(queries)),
        "query_file": str(query_file(cfg)), "query_shortfall": selection["shortfall"],
        "classes_without_positives": missing, "class_names": list(names.values()),
        "skipped": {cfg.dataset.val_split: manifest.get("skipped", [])},
        "eval_seconds": round(time.perf_counter() - start, 2),
    }
    directory = run_dir(cfg)
    write_json(directory / "metrics.json", metrics)
    write_json(directory / "per_query.json", {"queries": per_query})
    save_config(cfg, directory / "config.yaml")
    return metrics


def _must_exist(path: Path, cfg: DictConfig) -> Path:
    if not path.is_file():
        cell = f" cell={cfg.cell}" if cfg.cell else ""
        raise FileNotFoundError(f"{path} not found: run python -m bench.extract experiment={cfg.experiment}{cell}")
    return path


def summary_line(metrics: dict) -> str:
    k = PRECISION_K
    line = (f"mAP {metrics['map']:.4f}  P@{k} {metrics[f'precision_at_{k}']:.4f}  "
            f"({metrics['num_queries']} queries, {metrics['database_images']} images, "
            f"{metrics['vectors_per_image']:.1f} vectors/image; chance mAP {metrics['chance_map']:.3f}, "
            f"best possible P@{k} {metrics[f'max_precision_at_{k}']:.3f})")
    few = metrics[f"classes_under_{k}_positives"]
    if few:
        line += f"; fewer than {k} positives: " + ", ".join(f"{c} {n}" for c, n in few.items())
    return line


def evaluate_retrieval(cfg: DictConfig) -> dict[str, dict]:
    """``python eval.py`` for a retrieval experiment: every selected cell, then the table."""
    from bench.tables import write_tables

    results, missing = {}, {}
    for cell, ccfg in cell_configs(cfg).items():
        try:
            results[cell] = evaluate_cell(ccfg)
        except (FileNotFoundError, shards.ShardError) as err:  # not extracted (or no dataset): listed below
            missing[cell] = err
            log.warning("%s: %s", cell, err)
    if not results:
        raise next(iter(missing.values()))
    for cell, metrics in results.items():
        print(f"{cell}: {summary_line(metrics)}")
    if cfg.table.rows:
        print(write_tables(cfg, Path(cfg.paths.results_root) / str(cfg.experiment), next_step="eval.py"))
    return results
