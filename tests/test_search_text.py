"""Text queries in the region search tool (python -m bench.tools.search query text=...): indexes built
with a tiny random-weight CLIP, rankings checked against numpy cosines of the shards' region vectors
and a text embedding computed by open_clip's own full CLIP model."""
from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from bench.tools import search
from tests.conftest import shared_or_skip

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")  # open_clip's loader

SLIC = "regions.params.slic.num_components=30"
# index variants over the same scenes; the ip ones hold raw inner products, so text scores must be
# normalised by the tool; maskclip projects into the joint space by default (no project=true)
VARIANTS = {"cosine": [], "ip": ["retrieval.similarity=ip"],
            "ip_ivfpq": ["retrieval.similarity=ip", "retrieval.index=ivfpq", "retrieval.nlist=4", "retrieval.pq_m=8",
                         "retrieval.pq_bits=4"],
            "maskclip": []}


def clip_overrides(checkpoint: Path, name: str = "clip_vitb32") -> list[str]:
    return ["extract.progress=false", f"backbone.name={name}", f"backbone.params.{name}.checkpoint={checkpoint}"] \
        + (["backbone.params.clip_vitb32.project=true"] if name == "clip_vitb32" else [])


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    """8 built-in scenes, tiny random CLIP files ({backbone: path}; MaskCLIP's as a TorchScript
    archive like OpenAI's) and a function variant -> index over the scenes (each built once)."""
    from bench.backbones.clip import save_random_checkpoint
    from datamodules.synthetic.minivoc import render_scene_instances

    root = tmp_path_factory.mktemp("search_text")
    (root / "images").mkdir()
    for i in range(8):
        Image.fromarray(render_scene_instances(5, i, 128, 96)[0]).save(root / "images" / f"scene{i}.png")
    checkpoints = {name: save_random_checkpoint(name, root / f"{name}_tiny_random.pt", jit=name.startswith("mask"))
                   for name in ("clip_vitb32", "maskclip_vitl14")}
    built = {}

    def index(variant: str = "cosine") -> Path:
        if variant not in built:
            name = backbone_of(variant)
            search.build(root / "images", root / variant, [*clip_overrides(checkpoints[name], name), SLIC,
                                                           *VARIANTS[variant]])
            built[variant] = root / variant
        return built[variant]

    return root, checkpoints, index


def backbone_of(variant: str) -> str:
    return "maskclip_vitl14" if variant == "maskclip" else "clip_vitb32"


# ----------------------------------------------------------------------------- independent references
def shard_vectors(index_dir: Path) -> dict[str, np.ndarray]:
    """key -> (R, d) float64 region vectors, read from the shard tars with tarfile and np.load."""
    out = {}
    for shard in sorted((index_dir / "shards" / "all").glob("shard-*.tar")):
        with tarfile.open(shard) as tar:
            for member in tar.getmembers():
                if member.name.endswith(".feats.npy"):
                    out[member.name[:-len(".feats.npy")]] = np.load(io.BytesIO(tar.extractfile(member).read())).astype(
                        np.float64)
    return out


def reference_text(checkpoint: Path, text: str, templates: str = "none") -> np.ndarray:
    """(D,) unit embedding by open_clip's full CLIP model: each prompt normalised, averaged, renormalised."""
    import open_clip
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

    prompts = [text] if templates == "none" else [t(text) for t in OPENAI_IMAGENET_TEMPLATES]
    model = open_clip.load_openai_model(str(checkpoint), precision="fp32", device="cpu").eval()
    with torch.no_grad():
        e = model.encode_text(open_clip.tokenize(prompts)).double().numpy()
    mean = (e / np.linalg.norm(e, axis=1, keepdims=True)).mean(0)
    return mean / np.linalg.norm(mean)


def reference_region(checkpoint: Path, image: Path, box: tuple[int, int, int, int] | None = None,
                     mask: np.ndarray | None = None) -> np.ndarray:
    """(D,) the query object's vector: CLIP's projected grid (float16-rounded, as the shards store it),
    averaged over the object's pixels by the slow literal pooling reference."""
    from bench.backbones.clip import load_clip_backbone
    from bench.pooling import pool_regions_reference

    rgb = np.array(Image.open(image).convert("RGB"))
    if mask is None:
        mask = np.zeros(rgb.shape[:2], bool)
        x0, y0, x1, y1 = box
        mask[y0:y1, x0:x1] = True
    backbone = load_clip_backbone("clip_vitb32", checkpoint, project=True)
    grid = backbone.features(rgb).half().float()
    return pool_regions_reference(grid, torch.from_numpy(mask[None]), backbone.patch_size, "mean")[0].double().numpy()


def reference_ranking(vectors: dict[str, np.ndarray], query: np.ndarray) -> list[tuple[str, float]]:
    """(key, max over the image's regions of cos(region, query)), best first."""
    def cos(r: np.ndarray) -> float:
        return float(r @ query / (np.linalg.norm(r) * np.linalg.norm(query)))

    best = {key: max(cos(r) for r in feats) for key, feats in vectors.items()}
    return sorted(best.items(), key=lambda kv: -kv[1])


def assert_ranking(results: list[dict], expected: list[tuple[str, float]]) -> None:
    assert [r["key"] for r in results] == [k for k, _ in expected[:len(results)]]
    np.testing.assert_allclose([r["score"] for r in results], [s for _, s in expected[:len(results)]],
                               rtol=0, atol=2e-5)


# ----------------------------------------------------------------------------- rankings
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_text_query_ranks_by_best_region_cosine(scenes, variant):
    root, checkpoints, index = scenes
    results = search.query(index(variant), text="a step ladder", top=8, out=root / f"q_{variant}")
    vectors = shard_vectors(index(variant))
    text = reference_text(checkpoints[backbone_of(variant)], "a step ladder")
    assert_ranking(results, reference_ranking(vectors, text))
    saved = json.loads((root / f"q_{variant}" / "ranking.json").read_text())
    assert saved["results"] == results and saved["text"] == "a step ladder" and saved["similarity"] == "cosine"
    if variant.startswith("ip"):  # the index's own raw inner products would rank differently: this test can tell
        raw = sorted(vectors, key=lambda k: -max(vectors[k] @ text))
        assert raw != [r["key"] for r in results]


def test_imagenet_template_ensemble(scenes):
    root, checkpoints, index = scenes
    results = search.query(index(), text="ladder", templates="imagenet", top=8, out=root / "q_imagenet")
    vectors, checkpoint = shard_vectors(index()), checkpoints["clip_vitb32"]
    expected = reference_ranking(vectors, reference_text(checkpoint, "ladder", "imagenet"))
    assert_ranking(results, expected)
    plain = reference_ranking(vectors, reference_text(checkpoint, "ladder"))
    assert [s for _, s in plain] != pytest.approx([s for _, s in expected], abs=1e-3)  # the ensemble matters


@pytest.mark.parametrize("variant, weight", [("cosine", 0.5), ("cosine", 0.2), ("ip", 0.8)])
def test_text_and_example_region_rank_by_their_normalised_mix(scenes, variant, weight):
    root, checkpoints, index = scenes
    image = root / "images" / "scene3.png"
    results = search.query(index(variant), image, box="10,10,60,50", text="a step ladder", text_weight=weight,
                           top=8, out=root / f"mix_{variant}_{weight}")
    t = reference_text(checkpoints["clip_vitb32"], "a step ladder")
    r = reference_region(checkpoints["clip_vitb32"], image, box=(10, 10, 60, 50))
    mixed = weight * t / np.linalg.norm(t) + (1 - weight) * r / np.linalg.norm(r)
    assert_ranking(results, reference_ranking(shard_vectors(index(variant)), mixed / np.linalg.norm(mixed)))
    saved = json.loads((root / f"mix_{variant}_{weight}" / "ranking.json").read_text())
    assert saved["text_weight"] == weight and saved["box"] == "10,10,60,50"
    with Image.open(results[0]["heatmap"]) as picture:  # text | query | result | heatmap | colour bar
        assert picture.size[0] > 160 + 3 * 128 + 64


def test_cli_text_query_prints_and_writes_its_default_folder(scenes, capsys):
    root, checkpoints, index = scenes
    results = search.main(["query", f"index={index()}", "text=a step ladder", "top=3"])
    assert len(results) == 3
    folder = index() / "queries" / "text-a_step_ladder"
    assert json.loads((folder / "ranking.json").read_text())["results"] == results
    assert sorted(p.name for p in folder.glob("rank*.png")) == [Path(r["heatmap"]).name for r in results]
    out = capsys.readouterr().out
    assert all(r["key"] in out for r in results)
    with pytest.raises(SystemExit, match="must be a number"):
        search.main(["query", f"index={index()}", "text=ladder", "text_weight=half"])


# ----------------------------------------------------------------------------- errors
def config_only(root: Path, source: Path, name: str, **backbone_params) -> Path:
    """A folder with only a config.yaml (no index, no shards): an error raised there came before any work."""
    cfg = OmegaConf.load(source / "config.yaml")
    cfg.backbone.name = name
    for key, value in backbone_params.items():
        cfg.backbone.params[name][key] = value
    folder = root / f"config_only_{name}_{len(backbone_params)}"
    folder.mkdir(exist_ok=True)
    OmegaConf.save(cfg, folder / "config.yaml")
    return folder


def test_text_errors_come_before_any_work(scenes):
    root, checkpoints, index = scenes
    colour = config_only(root, index(), "colortexture")
    with pytest.raises(ValueError, match=r"built with backbone.name=colortexture.*text-aligned backbones: \[") as err:
        search.query(colour, text="a step ladder")
    assert "'clip_vitb32'" in str(err.value) and "'maskclip_vitl14'" in str(err.value)
    siglip = config_only(root, index(), "siglip2_vitb16")
    with pytest.raises(ValueError, match="backbone.name=siglip2_vitb16.*patch tokens, which are not in its image-text"):
        search.query(siglip, text="a step ladder")
    unprojected = config_only(root, index(), "clip_vitb32", project=None)
    with pytest.raises(ValueError, match=r"before CLIP's proj.*backbone.params.clip_vitb32.project=true"):
        search.query(unprojected, text="a step ladder")
    maskclip = config_only(root, index(), "maskclip_vitl14")  # projects by default: on to its (missing) file
    with pytest.raises(FileNotFoundError, match="maskclip_vitl14 checkpoint not found.*ViT-L-14-336px.pt"):
        search.query(maskclip, text="a step ladder")
    projected = config_only(root, index(), "clip_vitb32", project=True)
    for kwargs, message in [({"text": "x", "templates": "fancy"}, "templates='fancy' is unknown"),
                            ({"text": "x", "text_weight": 1.5}, r"text_weight=1.5 must lie in \[0, 1\]"),
                            ({"text": "  "}, "text= is empty"),
                            ({}, "give the query as image=IMG"),
                            ({"text": "x", "box": "0,0,5,5"}, "give image=IMG too"),
                            ({"image": root / "images" / "scene0.png"}, "exactly one of mask=PNG or box")]:
        with pytest.raises(ValueError, match=message):
            search.query(projected, **kwargs)


def test_the_command_line_prints_a_refusal_alone_and_exits_2(scenes):
    """What the user asked for is wrong, not the code: the message on stderr, no traceback."""
    import subprocess
    import sys

    root, _, index = scenes
    colour = config_only(root, index(), "colortexture")
    for args, message in [([f"index={colour}", "text=a step ladder"], "built with backbone.name=colortexture"),
                          ([f"index={colour}", "text=x", "templates=fancy"], "templates='fancy' is unknown"),
                          ([f"index={root / 'nowhere'}", "text=x"], "holds no search index")]:
        done = subprocess.run([sys.executable, "-m", "bench.tools.search", "query", *args], capture_output=True,
                              text=True, cwd=Path(__file__).resolve().parents[1], timeout=300)
        assert done.returncode == 2 and done.stderr.startswith("error: ") and message in done.stderr, done.stderr
        assert "Traceback" not in done.stderr


def test_text_query_on_a_real_colour_texture_index_names_its_backbone(tmp_path):
    from datamodules.synthetic.minivoc import render_scene_instances

    (tmp_path / "images").mkdir()
    Image.fromarray(render_scene_instances(5, 0, 64, 48)[0]).save(tmp_path / "images" / "a.png")
    search.build(tmp_path / "images", tmp_path / "index", ["extract.progress=false", SLIC])
    with pytest.raises(ValueError, match="colortexture.*text-aligned backbones"):
        search.main(["query", f"index={tmp_path / 'index'}", "text=a step ladder"])


# ----------------------------------------------------------------------------- real photos
@pytest.mark.fixtures
def test_text_search_on_real_coco_photos(scenes, tmp_path):
    """The fixture's six COCO photos indexed with the tiny random CLIP: a text query and a text +
    person-mask query, each equal to the independent ranking, with their pictures."""
    from datamodules.coco import load_coco

    _, checkpoints, _ = scenes
    checkpoint = checkpoints["clip_vitb32"]
    root = shared_or_skip() / "coco" / "icevision_sample"
    images = root / "images"  # read only: shards, index and pictures go to tmp_path
    summary = search.build(images, tmp_path / "index", clip_overrides(checkpoint))
    assert summary["images"] == 6
    vectors = shard_vectors(tmp_path / "index")
    text = reference_text(checkpoint, "a person riding a horse")
    results = search.query(tmp_path / "index", text="a person riding a horse", top=6, out=tmp_path / "text")
    assert_ranking(results, reference_ranking(vectors, text))
    assert sorted(r["key"] for r in results) == sorted(p.stem for p in images.iterdir())
    for r in results:
        with Image.open(r["heatmap"]) as picture:
            assert picture.size[0] > 2 * 427  # text | result | similarity | colour bar

    ds = load_coco(root / "annotations" / "annotations.json")
    person = ds.mask(next(a for a in ds.annotations[404249] if a.category_id == 1)).astype(bool)
    Image.fromarray(person.astype(np.uint8) * 255).save(tmp_path / "person.png")
    mixed = search.query(tmp_path / "index", images / "000000404249.jpg", mask=tmp_path / "person.png",
                         text="a person riding a horse", top=6, out=tmp_path / "mixed")
    r = reference_region(checkpoint, images / "000000404249.jpg", mask=person)
    q = 0.5 * text + 0.5 * r / np.linalg.norm(r)
    assert_ranking(mixed, reference_ranking(vectors, q / np.linalg.norm(q)))
