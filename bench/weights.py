"""Reading checkpoint files, and saying how a state dict differs from a model's.

Every loader of official weights (SAM family, SAM 2, ViT and CLIP backbones) reads its file
through ``read_checkpoint`` and reports a layout mismatch with ``state_dict_diff``, so the
errors read the same everywhere. Files are local; nothing is ever downloaded.
"""
from __future__ import annotations

from pathlib import Path

import torch


def save_state_dict(state: dict, path: str | Path) -> Path:
    """Write a state dict as the file format its suffix names: safetensors (``.safetensors``, tensors
    made contiguous) or ``torch.save``; the parent folder is created. Returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save(state, path)
    return path


def read_checkpoint(path: Path, mmap: bool = False, also: str = ""):
    """The object stored in ``path``: a ``.safetensors`` file as a state dict, anything else through
    ``torch.load(weights_only=True)`` on the CPU (``mmap``: tensors stay on disk until touched).
    Raises ValueError naming the file when it cannot be read (``also`` names other formats tried)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        return load_file(str(path))
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as error:
        raise ValueError(f"cannot read {path} as a {also}weights-only torch checkpoint: {error}") from error


def state_dict_diff(expected: dict[str, tuple], given: dict[str, tuple], limit: int = 5, prefix: str = "") -> str:
    """How {key: shape} of a file (``given``) differs from a model's (``expected``): the first ``limit``
    missing, unexpected and reshaped keys with their counts, keys shown with ``prefix``."""
    missing, unexpected = sorted(expected.keys() - given.keys()), sorted(given.keys() - expected.keys())
    reshaped = [f"{key} {given[key]} vs {expected[key]}" for key in sorted(expected.keys() & given.keys())
                if given[key] != expected[key]]
    return (f"missing {prefix}{missing[:limit]} ({len(missing)}), unexpected {prefix}{unexpected[:limit]} "
            f"({len(unexpected)}), shape differs (file vs model) {reshaped[:limit]} ({len(reshaped)})")
