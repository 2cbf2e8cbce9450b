"""Random-weight checkpoints in the official formats, for smoke runs without downloads.

    python -m bench.tools.random_weights [DIR]      # default: $REGIONBENCH_DATA/checkpoints/random (or data/...)

Each file is built from the real architecture classes (a 2-block toy encoder for SAM and
HQ-SAM, MobileSAM's TinyViT, SAM 2.1 Hiera-T, 2-block width-48 backbones: DINO/DINOv2 (also with registers),
DINOv3, ImageNet ViT, CLIP; 2-block width-64 SigLIP 2 and C-RADIOv3 trunks), seeded, and saved exactly as the
official checkpoint of that family is (raw state_dict; ``{"model": ...}`` for SAM 2; open_clip's whole-model
safetensors for SigLIP 2; NVIDIA's model.safetensors for C-RADIO), so it loads through
the same path a real checkpoint takes. Masks from random weights are meaningless: experiments
that use these files say so (e.g. the ``minivoc`` column of table1_region_generation).
"""
from __future__ import annotations

if __name__ == "__main__":  # --help is answered before torch is imported
    from bench.cli import help_and_exit

    help_and_exit(__doc__, ["python -m bench.tools.random_weights", "python -m bench.tools.random_weights DIR"])

import os
import sys
from pathlib import Path

from bench.atomic import atomic_path
from bench.backbones import clip as backbones_clip, dinotxt as backbones_dinotxt, dinov3 as backbones_dinov3
from bench.backbones import vit as backbones_vit
from bench.backbones import radio as backbones_radio, siglip as backbones_siglip
from bench.regions import sam as regions_sam, sam2 as regions_sam2

# file name -> how to make it
RANDOM_CHECKPOINTS = {
    "sam_vit_test_random.pth": lambda p: regions_sam.save_random_checkpoint("sam", "vit_test", p),
    "sam_hq_vit_test_random.pth": lambda p: regions_sam.save_random_checkpoint("hq_sam", "vit_test", p),
    "mobile_sam_random.pt": lambda p: regions_sam.save_random_checkpoint("mobile_sam", "vit_t", p),
    "sam2.1_hiera_tiny_random.pt": lambda p: regions_sam2.save_random_checkpoint("hiera_t", "2.1", p),
    # tiny ViTs (2 blocks, width 48) in each backbone's official format
    **{f"{name}_tiny_random.pth": (lambda name: lambda p: backbones_vit.save_random_checkpoint(name, p, tiny=True))(name)
       for name in ("dinov2_vits14", "dinov2_vitb14", "dinov2_vitl14", "dinov2_vitg14", "dino_vitb16",
                    *backbones_vit.REG_NAMES)},
    # tiny DINOv3 ViTs in the official facebookresearch/dinov3 layout
    **{f"{name}_tiny_random.pth":
       (lambda name: lambda p: backbones_dinov3.save_random_checkpoint(name, p, tiny=True))(name)
       for name in backbones_dinov3.DINOV3_BACKBONES},
    "imagenet_vitl_tiny_random.safetensors":
        lambda p: backbones_vit.save_random_checkpoint("imagenet_vitl", p, tiny=True),
    "clip_vitb32_tiny_random.pt": lambda p: backbones_clip.save_random_checkpoint("clip_vitb32", p, tiny=True),
    "maskclip_vitl14_tiny_random.pt": lambda p: backbones_clip.save_random_checkpoint("maskclip_vitl14", p, tiny=True),
    "clip_vitb16_tiny_random.pt": lambda p: backbones_clip.save_random_checkpoint("clip_vitb16", p, tiny=True),
    # SigLIP 2 and C-RADIO: the names experiments/backbones_2025.yaml runs (its DINOv2-reg and DINOv3 files are above)
    # open_clip's open_clip_model.safetensors layout (trunk + tiny text tower), and beside it, as in the timm
    # repositories, a tiny Gemma-style tokenizer.json + tokenizer_config.json (bench.openvocab.load_tokenizer)
    "siglip2_vitb16_256_tiny_random.safetensors":
        lambda p: backbones_siglip.save_random_checkpoint("siglip2_vitb16_256", p, tokenizer=True),
    "radio_v3_vitl16_tiny_random.safetensors":  # NVIDIA's model.safetensors layout (128x128 table: 4 MB)
        lambda p: backbones_radio.save_random_checkpoint("radio_v3_vitl16", p, layout="nvidia"),
    "radio_v25_vitl16_tiny_random.safetensors":  # NVIDIA's Hugging Face layout (nvidia/RADIO-L)
        lambda p: backbones_radio.save_random_checkpoint("radio_v25_vitl16", p, layout="nvidia"),
    # dino.txt's head-and-text-encoder file (pairs with dinov3_vitl16_tiny_random.pth above) and, beside it as
    # bench.openvocab looks for it, CLIP's BPE vocabulary (the copy open_clip ships)
    "dinotxt_vitl16_tiny_random.pth": lambda p: backbones_dinotxt.save_random_checkpoint(p, bpe=True),
}


def write_random_checkpoints(directory: str | Path) -> list[Path]:
    """Create any missing file of RANDOM_CHECKPOINTS in ``directory``; returns all paths."""
    directory = Path(directory)
    paths = []
    for name, make in RANDOM_CHECKPOINTS.items():
        path = directory / name
        if not path.is_file():
            with atomic_path(path, keep_suffix=True) as tmp:
                make(tmp)
        paths.append(path)
    return paths


if __name__ == "__main__":
    if any(arg.startswith("-") for arg in sys.argv[1:]):  # an option, not a directory
        sys.exit(f"unknown option {sys.argv[1]!r}; usage: python -m bench.tools.random_weights [DIR]")
    default = Path(os.environ.get("REGIONBENCH_DATA", "data")) / "checkpoints" / "random"
    for written in write_random_checkpoints(sys.argv[1] if len(sys.argv) > 1 else default):
        print(written)
