"""Open-vocabulary queries: text towers from tiny random OpenAI-format CLIP files, checked against
open_clip's own full CLIP model and against literal numpy references."""
from __future__ import annotations

import socket

import numpy as np
import pytest
import torch

from bench import openvocab
from bench.backbones.clip import save_random_checkpoint
from bench.openvocab import (class_text_embeddings, combine_queries, load_text_tower, load_tokenizer,
                             text_query_scores, zero_shot_labels, zero_shot_logits)

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")  # open_clip's loader

NAMES = ["background", "cat", "dog", "pottedplant"]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """(name, "jit" | "state_dict") -> path of a tiny random checkpoint (seed 0)."""
    root = tmp_path_factory.mktemp("openvocab")
    return {(name, kind): save_random_checkpoint(name, root / f"{name}_{kind}.pt", jit=kind == "jit")
            for name in ("clip_vitb32", "maskclip_vitl14") for kind in ("jit", "state_dict")}


def cosines(regions: np.ndarray, text: np.ndarray) -> np.ndarray:
    """(R, D), (C, D) -> (R, C) in float64, one dot product at a time."""
    out = np.zeros((len(regions), len(text)))
    for i, r in enumerate(regions):
        for c, t in enumerate(text):
            out[i, c] = r @ t / (np.linalg.norm(r) * np.linalg.norm(t))
    return out


def reference_labels(regions, text, background, threshold=None, scale=50.0) -> np.ndarray:
    cos = cosines(np.asarray(regions, np.float64), np.asarray(text, np.float64))
    labels = cos.argmax(1) + (1 if background == "threshold" else 0)
    if threshold is not None:
        e = np.exp(scale * cos - (scale * cos).max(1, keepdims=True))
        labels[(e / e.sum(1, keepdims=True)).max(1) < threshold] = 0
    return labels


# ----------------------------------------------------------------------------------------------
# (a) text tower and prompt ensembling

@pytest.mark.parametrize("kind", ["jit", "state_dict"])
@pytest.mark.parametrize("name", ["clip_vitb32", "maskclip_vitl14"])
def test_prompt_ensemble_equals_open_clip_reference(ckpt, name, kind):
    import open_clip

    path = ckpt[name, kind]
    tower, tokenizer = load_text_tower(name, path), load_tokenizer(name)
    got = class_text_embeddings(tower, tokenizer, NAMES, openvocab.TEMPLATES)

    model = open_clip.load_openai_model(str(path), precision="fp32", device="cpu").eval()  # the full CLIP
    rows = []
    with torch.no_grad():
        for name_ in NAMES:
            e = model.encode_text(open_clip.tokenize([t(name_) for t in openvocab.TEMPLATES])).double()
            e = e / e.norm(dim=-1, keepdim=True)
            m = e.mean(0)
            rows.append(m / m.norm())
    expected = torch.stack(rows)
    assert got.dtype == torch.float32 and got.shape == (len(NAMES), model.text_projection.shape[1])
    torch.testing.assert_close(got.double(), expected, rtol=0, atol=2e-6)
    # the random tower gives prompts of unequal norms, so skipping the per-prompt normalisation
    # would change the result: this test can tell the two apart
    with torch.no_grad():
        raw = model.encode_text(open_clip.tokenize([t("cat") for t in openvocab.TEMPLATES]))
    assert raw.norm(dim=-1).std() / raw.norm(dim=-1).mean() > 1e-3


def test_encode_text_equals_open_clip(ckpt):
    import open_clip

    path = ckpt["maskclip_vitl14", "jit"]
    tokens = open_clip.tokenize(["a photo of a cat.", "a bad photo of the pottedplant.", "x"])
    model = open_clip.load_openai_model(str(path), precision="fp32", device="cpu").eval()
    with torch.no_grad():
        expected = model.encode_text(tokens)
    torch.testing.assert_close(load_text_tower("maskclip_vitl14", path).encode_text(tokens), expected)


def test_templates_are_open_clips_lists():
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES, SIMPLE_IMAGENET_TEMPLATES

    assert openvocab.TEMPLATES is OPENAI_IMAGENET_TEMPLATES and len(openvocab.TEMPLATES) == 80
    assert openvocab.SIMPLE_TEMPLATES is SIMPLE_IMAGENET_TEMPLATES
    assert openvocab.TEMPLATES[0]("cat") == "a bad photo of a cat."
    with pytest.raises(AttributeError):
        openvocab.NOT_A_NAME


def test_import_does_not_import_open_clip():
    import subprocess
    import sys

    code = "import sys, bench.openvocab; assert 'open_clip' not in sys.modules, 'open_clip imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


# ----------------------------------------------------------------------------------------------
# (b) zero-shot predictions

def test_zero_shot_logits_and_labels_equal_literal_cosines():
    g = torch.Generator().manual_seed(0)
    regions = torch.randn(40, 16, generator=g) * torch.rand(40, 1, generator=g) * 5  # unequal norms
    text = torch.randn(6, 16, generator=g) * torch.tensor([0.1, 1, 3, 10, 0.5, 2])[:, None]  # not unit
    expected = cosines(regions.double().numpy(), text.double().numpy())
    np.testing.assert_allclose(zero_shot_logits(regions, text).numpy(), expected, rtol=0, atol=1e-6)
    labels = zero_shot_labels(regions, text, background=None)
    assert labels.dtype == torch.int64
    np.testing.assert_array_equal(labels.numpy(), expected.argmax(1))
    # text norms differ, so the argmax of unnormalised dot products would differ
    assert (regions @ text.T).argmax(1).tolist() != labels.tolist()


def test_zero_shot_labels_with_real_text_tower(ckpt):
    path = ckpt["clip_vitb32", "state_dict"]
    text = class_text_embeddings(load_text_tower("clip_vitb32", path), load_tokenizer("clip_vitb32"),
                                 NAMES, openvocab.SIMPLE_TEMPLATES)
    regions = torch.randn(30, text.shape[1], generator=torch.Generator().manual_seed(1))
    np.testing.assert_array_equal(zero_shot_labels(regions, text).numpy(),
                                  cosines(regions.double().numpy(), text.double().numpy()).argmax(1))


def test_dimension_mismatch_says_to_project():
    with pytest.raises(ValueError, match="project=true"):
        zero_shot_logits(torch.zeros(3, 768), torch.zeros(4, 512))


# ----------------------------------------------------------------------------------------------
# (c) background rules

def test_background_rules_on_a_hand_made_example():
    text = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    regions = torch.tensor([[1.0, 0.1], [0.1, 1.0], [1.0, 1.0]])  # near row 0, near row 1, halfway
    assert zero_shot_labels(regions, text, background="class").tolist()[:2] == [0, 1]
    assert zero_shot_labels(regions, text, background=None).tolist()[:2] == [0, 1]
    # rows are foreground classes 1, 2; the halfway region has probabilities 0.5 / 0.5
    assert zero_shot_labels(regions, text, background="threshold", threshold=0.6).tolist() == [1, 2, 0]
    assert zero_shot_labels(regions, text, background="threshold", threshold=0.4).tolist()[:2] == [1, 2]
    # with background as row 0 plus a threshold (SCLIP / ClearCLIP on VOC21)
    assert zero_shot_labels(regions, text, background="class", threshold=0.6).tolist() == [0, 1, 0]


@pytest.mark.parametrize("background, threshold", [("class", None), ("class", 0.3), ("threshold", 0.3),
                                                   ("threshold", 0.6)])
def test_background_rules_equal_reference(background, threshold):
    g = torch.Generator().manual_seed(2)
    text = torch.linalg.qr(torch.randn(8, 5, generator=g))[0].T  # 5 orthonormal rows: their mean is equidistant
    confident = text[torch.randint(0, 5, (20,), generator=g)] + 0.05 * torch.randn(20, 8, generator=g)
    ambiguous = text.mean(0) + 0.02 * torch.randn(20, 8, generator=g)
    regions = torch.cat([confident, ambiguous])
    got = zero_shot_labels(regions, text, background=background, threshold=threshold, logit_scale=20.0)
    expected = reference_labels(regions.numpy(), text.numpy(), background, threshold, scale=20.0)
    np.testing.assert_array_equal(got.numpy(), expected)
    if threshold is not None:  # the threshold does send some regions to 0 and keeps others
        assert 0 < (got == 0).sum() < len(got) and (got[:20] != 0).any()


def test_background_rule_errors():
    regions, text = torch.ones(2, 4), torch.eye(4)
    with pytest.raises(ValueError, match="needs a threshold"):
        zero_shot_labels(regions, text, background="threshold")
    with pytest.raises(ValueError, match="background=None"):
        zero_shot_labels(regions, text, background=None, threshold=0.5)
    with pytest.raises(ValueError, match="'class', 'threshold' or None"):
        zero_shot_labels(regions, text, background="words")


# ----------------------------------------------------------------------------------------------
# (d) the tokenizer and tower are local

@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args[:2]}")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


def test_tokenizer_and_tower_need_no_network(no_network, ckpt):
    with pytest.raises(AssertionError, match="network access"):  # the block works
        socket.create_connection(("huggingface.co", 443))
    tokenizer = load_tokenizer("clip_vitb32")
    tokens = tokenizer(["a photo of a cat.", "a photo of a dog."])
    assert tokens.dtype == torch.int64 and tokens.shape == (2, 77)
    assert tokens[0, :9].tolist() == [49406, 320, 1125, 539, 320, 2368, 269, 49407, 0]  # OpenAI's BPE ids
    tower = load_text_tower("clip_vitb32", ckpt["clip_vitb32", "jit"])
    assert class_text_embeddings(tower, tokenizer, ["cat"], openvocab.SIMPLE_TEMPLATES).shape == (1, 32)


# ----------------------------------------------------------------------------------------------
# (e) errors

def test_siglip2_text_needs_its_files():  # its tower and tokenizer: tests/test_openvocab_siglip.py
    with pytest.raises(FileNotFoundError, match=r"open_clip_model\.safetensors"):
        load_text_tower("siglip2_vitb16_256", "nowhere.safetensors")
    with pytest.raises(ValueError, match="tokenizer is read from the files beside its checkpoint"):
        load_tokenizer("siglip2_vitb16_256")


@pytest.mark.parametrize("name, file", [("clip_vitb32", "ViT-B-32.pt"), ("maskclip_vitl14", "ViT-L-14-336px.pt")])
def test_missing_file_names_the_official_file(tmp_path, name, file):
    with pytest.raises(FileNotFoundError, match=f"official file is {file}"):
        load_text_tower(name, tmp_path / "missing.pt")


def test_unknown_backbone_lists_the_valid_ones():
    with pytest.raises(ValueError, match="clip_vitb32"):
        load_tokenizer("dinov2_vitl14")


def test_wrong_file_and_image_only_file_are_refused(tmp_path, ckpt):
    with pytest.raises(ValueError, match="ViT-L-14-336px.pt"):  # a (tiny) ViT-B/32 file for MaskCLIP
        load_text_tower("maskclip_vitl14", ckpt["clip_vitb32", "state_dict"])
    state = torch.load(ckpt["clip_vitb32", "state_dict"])
    torch.save({k: v for k, v in state.items() if k.startswith("visual.")}, tmp_path / "visual.pt")
    with pytest.raises(ValueError, match="no text tower"):
        load_text_tower("clip_vitb32", tmp_path / "visual.pt")


# ----------------------------------------------------------------------------------------------
# text search

def test_text_query_scores_equal_literal_max():
    g = torch.Generator().manual_seed(3)
    images = [torch.randn(r, 8, generator=g) * 3 for r in (5, 1, 12)] + [torch.zeros(0, 8)]
    query = torch.randn(8, generator=g) * 7
    got = text_query_scores(images, query)
    expected = [cosines(x.double().numpy(), query.double().numpy()[None]).max() for x in images[:3]]
    np.testing.assert_allclose(got[:3].numpy(), expected, rtol=0, atol=1e-6)
    assert got[3] == float("-inf") and got.shape == (4,)


def test_combined_query_is_the_normalised_sum():
    g = torch.Generator().manual_seed(4)
    text, region = torch.randn(8, generator=g) * 4, torch.randn(8, generator=g) * 0.2
    t, r = text.double().numpy(), region.double().numpy()
    s = t / np.linalg.norm(t) + r / np.linalg.norm(r)
    np.testing.assert_allclose(combine_queries(text, region).numpy(), s / np.linalg.norm(s), atol=1e-6)
    # ranking by the combined query = ranking by the sum of the two cosine similarities
    images = [torch.randn(4, 8, generator=g) for _ in range(10)]
    scores = text_query_scores(images, combine_queries(text, region)).double().numpy()
    summed = [(cosines(x.double().numpy(), t[None]) + cosines(x.double().numpy(), r[None])).max()
              for x in images]
    np.testing.assert_array_equal(np.argsort(-scores), np.argsort(-np.array(summed)))
    np.testing.assert_allclose(combine_queries(text, region, region_weight=0.0).numpy(),
                               t / np.linalg.norm(t), atol=1e-6)
