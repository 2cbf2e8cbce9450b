"""SigLIP 2 text queries (bench.openvocab): a tiny random open_clip SigLIP 2 file with its tiny
Gemma-style tokenizer beside it, checked against open_clip's own full model (CustomTextCLIP) and
against transformers.AutoTokenizer on the same files; region vectors without project=true are refused,
with the reason and the fix (the project=true path: tests/test_siglip_dense.py)."""
from __future__ import annotations

import shutil
import socket
import string

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from bench import openvocab
from bench.backbones.siglip import TINY_VOCAB, TOKENIZER_FILES, save_random_checkpoint
from bench.openvocab import class_text_embeddings, load_text_tower, load_tokenizer
from tests.test_openvocab import no_network  # noqa: F401  (the socket-blocking fixture)

NAME = "siglip2_vitb16_256"  # open_clip ViT-B-16-SigLIP2-256
NAMES = ["background", "cat", "potted plant", "a step ladder"]
TEXTS = ["A photo of a CAT!", "a  bad   photo of the potted-plant.", "zèbre, ÉLAN & co", "x",
         " ".join(["ladder"] * 80)]  # the last one is longer than the 64-token context


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """A tiny random ViT-B-16-SigLIP2-256 file laid out as its Hugging Face repository: the open_clip
    safetensors with tokenizer.json and tokenizer_config.json beside it."""
    return save_random_checkpoint(NAME, tmp_path_factory.mktemp("siglip_text") / "open_clip_model.safetensors")


def reference_model(path, **trunk_kwargs):
    """open_clip's CustomTextCLIP for ViT-B-16-SigLIP2-256 from its own config, with the tiny sizes
    written out here (trunk depth 2 / width 64, text 1 layer / width 64 / 2 heads / vocab 512),
    loaded strictly from the file; ``trunk_kwargs`` go to timm (``dynamic_img_size=True``: any size)."""
    import open_clip
    import timm
    from open_clip.model import CustomTextCLIP, _build_text_tower

    from bench.weights import read_checkpoint

    cfg = open_clip.get_model_config("ViT-B-16-SigLIP2-256")
    text_cfg = {k: v for k, v in cfg["text_cfg"].items() if k not in ("hf_tokenizer_name", "tokenizer_kwargs")}
    text_cfg.update(vocab_size=512, width=64, heads=2, layers=1)
    with torch.device("meta"):  # skip the full-size towers, then put tiny real ones in
        model = CustomTextCLIP(64, vision_cfg=cfg["vision_cfg"], text_cfg=text_cfg, init_logit_bias=-10)
    model.visual.trunk = timm.create_model(cfg["vision_cfg"]["timm_model_name"], pretrained=False, num_classes=0,
                                           global_pool="map", depth=2, embed_dim=64, num_heads=2, **trunk_kwargs)
    model.text = _build_text_tower(64, text_cfg)
    model.logit_scale, model.logit_bias = torch.nn.Parameter(torch.zeros(())), torch.nn.Parameter(torch.zeros(()))
    model.load_state_dict(read_checkpoint(path), strict=True)
    return model.eval()


def canonical(text: str) -> str:
    """big_vision's canonicalisation, written out: lower case, ASCII punctuation and "_" removed,
    whitespace runs collapsed (open_clip's clean='canonicalize' for SigLIP 2; ftfy leaves these texts)."""
    return " ".join(text.replace("_", " ").translate(str.maketrans("", "", string.punctuation)).lower().split())


def reference_ids(folder, texts: list[str]) -> torch.Tensor:
    """(N, 64): transformers.AutoTokenizer on the files, padded with <pad> to 64 and truncated."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    return tokenizer([canonical(t) for t in texts], max_length=64, padding="max_length", truncation=True,
                     return_tensors="pt").input_ids


def relative_error(ours: torch.Tensor, ref: torch.Tensor) -> float:
    return ((ours - ref).abs().max() / ref.abs().max()).item()


# ----------------------------------------------------------------------------------------------
# text tower, tokenizer, prompt ensembles

def test_text_tower_equals_open_clip_encode_text(ckpt):
    tokens = reference_ids(ckpt.parent, TEXTS)
    with torch.no_grad():
        expected = reference_model(ckpt).encode_text(tokens)  # projected, not normalised
    tower = load_text_tower(NAME, ckpt)
    ours = tower.encode_text(tokens)
    assert ours.shape == expected.shape == (len(TEXTS), 64) and tower.embed_dim == 64 and tower.context_length == 64
    error = relative_error(ours, expected)
    print(f"siglip2 text tower: max relative error {error:.2e}")
    assert error < 1e-4
    # the check tells pooling apart: CLIP's end-of-text (argmax) pooling instead of SigLIP's last token
    tower.text.pool_type = "argmax"
    assert relative_error(tower.encode_text(tokens), expected) > 1e-2


def test_tokenizer_ids_equal_auto_tokenizer_with_the_model_settings(ckpt):
    from transformers import AutoTokenizer

    tokenizer = load_tokenizer(NAME, ckpt)
    ids = tokenizer(TEXTS)
    expected = reference_ids(ckpt.parent, TEXTS)
    assert ids.dtype == torch.int64 and ids.shape == (len(TEXTS), 64)
    torch.testing.assert_close(ids, expected, rtol=0, atol=0)
    hf = AutoTokenizer.from_pretrained(str(ckpt.parent), local_files_only=True)
    assert hf.is_fast and type(hf).__name__ == "GemmaTokenizer" and len(hf) == TINY_VOCAB
    assert int(ids.max()) < load_text_tower(NAME, ckpt).text.token_embedding.num_embeddings == TINY_VOCAB
    assert (ids[:4] == hf.eos_token_id).sum(1).tolist() == [1] * 4 and ids[3, -1] == hf.pad_token_id == 0
    assert (ids[4] != hf.pad_token_id).all()  # truncated at 64
    # the canonicalisation matters here: the texts as typed tokenise differently
    raw = hf(TEXTS[:3], max_length=64, padding="max_length", truncation=True, return_tensors="pt").input_ids
    assert (raw != ids[:3]).any(dim=1).all()


def test_prompt_ensemble_equals_independent_computation(ckpt):
    got = class_text_embeddings(load_text_tower(NAME, ckpt), load_tokenizer(NAME, ckpt), NAMES, openvocab.TEMPLATES)
    model = reference_model(ckpt)
    rows = []
    with torch.no_grad():
        for name in NAMES:
            e = model.encode_text(reference_ids(ckpt.parent, [t(name) for t in openvocab.TEMPLATES])).double()
            e = e / e.norm(dim=-1, keepdim=True)
            m = e.mean(0)
            rows.append(m / m.norm())
    assert got.dtype == torch.float32 and got.shape == (len(NAMES), 64)
    torch.testing.assert_close(got.double(), torch.stack(rows), rtol=0, atol=2e-6)
    with torch.no_grad():  # unequal prompt norms: skipping the per-prompt normalisation would show
        raw = model.encode_text(reference_ids(ckpt.parent, [t("cat") for t in openvocab.TEMPLATES]))
    assert raw.norm(dim=-1).std() / raw.norm(dim=-1).mean() > 1e-3


def test_text_is_comparable_with_the_global_image_embedding(ckpt):
    """The supported image side: cosines of global_feature (the attention-pooled embedding) and the
    text embeddings equal open_clip's encode_image / encode_text cosines."""
    from bench.backbones.siglip import load_siglip_backbone

    img = np.random.default_rng(0).integers(0, 256, (256, 256, 3), dtype=np.uint8)  # open_clip: its 256x256
    backbone = load_siglip_backbone(NAME, ckpt)
    ours = F.normalize(backbone.global_feature(img), dim=-1) @ F.normalize(
        load_text_tower(NAME, ckpt).encode_text(load_tokenizer(NAME, ckpt)(NAMES)), dim=-1).T
    model = reference_model(ckpt)
    with torch.no_grad():
        image = model.encode_image(backbone.preprocess(img)[None], normalize=True)
        text = model.encode_text(reference_ids(ckpt.parent, NAMES), normalize=True)
    torch.testing.assert_close(ours, (image @ text.T)[0], rtol=0, atol=1e-5)


def test_tokenizer_and_tower_need_no_network(no_network, ckpt):  # noqa: F811
    with pytest.raises(AssertionError, match="network access"):  # the block works
        socket.create_connection(("huggingface.co", 443))
    tokenizer = load_tokenizer(NAME, ckpt)
    tower = load_text_tower(NAME, ckpt)
    assert class_text_embeddings(tower, tokenizer, ["cat"], openvocab.SIMPLE_TEMPLATES).shape == (1, 64)


# ----------------------------------------------------------------------------------------------
# errors

@pytest.mark.parametrize("missing", TOKENIZER_FILES)
def test_missing_tokenizer_file_is_named_with_where_it_is_published(tmp_path, ckpt, missing):
    shutil.copy(ckpt, tmp_path / ckpt.name)
    for file in TOKENIZER_FILES:
        if file != missing:
            shutil.copy(ckpt.parent / file, tmp_path / file)
    with pytest.raises(FileNotFoundError, match=rf"tokenizer file {missing} is not in {tmp_path}.*"
                                                r"huggingface\.co/timm/ViT-B-16-SigLIP2-256.*save_random_tokenizer"):
        load_tokenizer(NAME, tmp_path / ckpt.name)
    with pytest.raises(ValueError, match="beside its checkpoint"):
        load_tokenizer(NAME)


def test_wrong_or_missing_text_tower_and_file(tmp_path, ckpt):
    from bench.weights import read_checkpoint, save_state_dict

    with pytest.raises(FileNotFoundError, match=r"open_clip_model\.safetensors .*huggingface\.co/timm/ViT-B-16"):
        load_text_tower(NAME, tmp_path / "nowhere.safetensors")
    state = read_checkpoint(ckpt)
    save_state_dict({k: v for k, v in state.items() if not k.startswith("text.")}, tmp_path / "image_only.safetensors")
    with pytest.raises(ValueError, match="has no text tower"):
        load_text_tower(NAME, tmp_path / "image_only.safetensors")
    save_state_dict({k: v for k, v in state.items() if k != "text.ln_final.bias"}, tmp_path / "no_bias.safetensors")
    with pytest.raises(ValueError, match=r"does not fit tiny siglip2_vitb16_256: "
                                         r"keys missing text\.\['ln_final\.bias'\] \(1\)"):
        load_text_tower(NAME, tmp_path / "no_bias.safetensors")


# ----------------------------------------------------------------------------------------------
# region vectors: SigLIP 2 patch tokens are outside the image-text space, and are refused without project

def test_check_region_space_explains_the_refusal_and_the_fix():
    for project in (None, False):
        with pytest.raises(ValueError, match=r"siglip2_so400m14 region vectors without project=true pool SigLIP 2's "
                                             r"trunk patch tokens, which are not in its image-text space.*"
                                             r"attention-pool head.*backbone\.params\.siglip2_so400m14\.project=true"):
            openvocab.check_region_space("siglip2_so400m14", project)
    for name, project in (("clip_vitb32", True), ("maskclip_vitl14", None), ("colortexture", None),
                          ("siglip2_so400m14", True)):
        openvocab.check_region_space(name, project)  # no refusal
    with pytest.raises(ValueError, match=r"before CLIP's proj.*backbone.params.clip_vitb16.project=true"):
        openvocab.check_region_space("clip_vitb16")  # CLIP's default: the paper's tokens


def test_text_search_on_a_siglip2_index_refuses_before_loading_the_tower(tmp_path, ckpt):
    """A real index of a tiny SigLIP 2 (trunk width 64 = text width 64: the dimensions agree, so the
    refusal must come from knowing what the vectors are)."""
    from bench.tools import search
    from datamodules.synthetic.minivoc import render_scene_instances

    (tmp_path / "images").mkdir()
    for i in range(2):
        Image.fromarray(render_scene_instances(5, i, 64, 48)[0]).save(tmp_path / "images" / f"scene{i}.png")
    search.build(tmp_path / "images", tmp_path / "index",
                 ["extract.progress=false", f"backbone.name={NAME}", f"backbone.params.{NAME}.checkpoint={ckpt}",
                  "regions.params.slic.num_components=10"])
    with pytest.raises(ValueError, match=rf"backbone.name={NAME}.*not in its image-text space.*"
                                         rf"backbone\.params\.{NAME}\.project=true"):
        search.query(tmp_path / "index", text="a step ladder")
    assert not (tmp_path / "index" / "queries").exists()
    # its image search still works
    mask = np.zeros((48, 64), np.uint8)
    mask[10:30, 10:40] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    assert search.query(tmp_path / "index", tmp_path / "images" / "scene0.png", mask=tmp_path / "mask.png", top=2,
                        out=tmp_path / "q")


def test_zero_shot_refuses_siglip2_before_extracting(tmp_path, ckpt):
    from omegaconf import OmegaConf

    from bench.config import cell_config, load_config
    from bench.tasks.zeroshot import TASK, text_embeddings
    from tests.conftest import TINY

    cfg = cell_config(load_config(["experiment=zeroshot_segmentation", *TINY, f"paths.data_root={tmp_path / 'data'}",
                                   f"paths.results_root={tmp_path / 'results'}"]), "maskclip_vitl14_region/minivoc")
    OmegaConf.update(cfg, "backbone.name", NAME)
    OmegaConf.update(cfg, f"backbone.params.{NAME}.checkpoint", str(ckpt))
    assert OmegaConf.select(cfg, f"backbone.params.{NAME}.project") is False  # the default
    for run in (lambda c: TASK.extract(c, TASK), text_embeddings):  # python -m bench.extract, eval.py
        with pytest.raises(ValueError, match="not in its image-text space"):
            run(cfg)
    assert not (tmp_path / "data").exists()  # nothing generated or extracted
