"""Inflate a 2D GFPGANv1Clean checkpoint into the 3D temporal super-resolution network.

MetaPortrait §3.3, eq. 10 (docs/METHOD.md §9): the 3D U-Net's kernels are initialised by
*inflating* a pretrained 2D face-restoration network (GFPGAN v1.3/v1.4, "clean" architecture) and
its StyleGAN2 decoder is copied. :class:`~metaportrait.models.temporal_sr.TemporalSuperResolution`
keeps GFPGANv1Clean's parameter names, so inflation is a key-by-key map:

* a 2D conv weight ``Cout×Cin×k×k`` becomes ``Cout×Cin×kt×k×k``:
  ``"centre"`` puts the 2D kernel on the centre time slice and zeros elsewhere (the network starts
  as the per-frame 2D network on *any* clip); ``"average"`` puts ``kernel / kt`` on every slice
  (I3D; equals the 2D network on a static clip). Both reproduce the 2D network on a clip of
  identical frames (reflection padding repeats the same frame);
* everything else (biases, ``final_linear``, the whole ``stylegan_decoder`` incl. its noise
  buffers) is copied unchanged;
* ``toRGB.*`` (GFPGAN's auxiliary pyramid-loss heads, unused at inference) are dropped.

Official checkpoints (``GFPGANv1.3.pth``, ``GFPGANv1.4.pth`` from the GFPGAN GitHub releases) are
pickled dicts ``{"params_ema": state_dict, ...}``; :func:`load_gfpgan_state_dict` reads them with
``torch.load(weights_only=True)`` (tensors and plain containers only, no code execution).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Literal

import torch

from metaportrait.errors import WeightsError
from metaportrait.models.gfpgan_clean import GFPGANv1CleanConfig
from metaportrait.models.temporal_sr import TemporalSRConfig, TemporalSuperResolution

__all__ = [
    "DROPPED_PREFIXES",
    "InflationMethod",
    "gfpgan_config_for",
    "inflate_gfpgan_state_dict",
    "load_gfpgan_state_dict",
    "temporal_sr_from_gfpgan",
]

InflationMethod = Literal["centre", "average"]
DROPPED_PREFIXES: tuple[str, ...] = ("toRGB.",)


def gfpgan_config_for(config: TemporalSRConfig) -> GFPGANv1CleanConfig:
    """The 2D GFPGANv1Clean whose weights inflate into ``config`` (needs ``unet_input="upsample"``)."""
    if config.unet_input != "upsample":
        raise ValueError(
            f"only unet_input='upsample' matches GFPGAN's U-Net (it runs at out_size), got {config.unet_input!r}"
        )
    return GFPGANv1CleanConfig(
        out_size=config.out_size,
        num_style_feat=config.num_style_feat,
        channel_multiplier=config.channel_multiplier,
        num_mlp=config.num_mlp,
        input_is_latent=config.input_is_latent,
        different_w=config.different_w,
        narrow=config.narrow,
        sft_half=config.sft_half,
    )


def load_gfpgan_state_dict(path: str | Path, key: str | None = None) -> dict[str, torch.Tensor]:
    """Read a GFPGAN ``.pth`` safely (``weights_only=True``) and return its ``params_ema``.

    ``key``: which entry to take; default ``"params_ema"``, else ``"params"``, else the file itself
    when it already is a flat state dict. ``.safetensors`` files are read with safetensors.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"GFPGAN weights not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj: object = load_file(str(path))
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling errors have many types
        raise WeightsError(f"could not read {path} as a weights-only checkpoint: {exc}") from exc
    if not isinstance(obj, Mapping):
        raise WeightsError(f"{path}: expected a dict, got {type(obj).__name__}")
    if key is not None:
        if key not in obj:
            raise WeightsError(f"{path}: no entry {key!r}; entries: {sorted(map(str, obj))[:10]}")
        obj = obj[key]
    elif "params_ema" in obj:
        obj = obj["params_ema"]
    elif "params" in obj:
        obj = obj["params"]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(f"{path}: the selected entry is not a state dict of tensors")
    return dict(obj)


def _inflate(weight: torch.Tensor, kt: int, method: InflationMethod) -> torch.Tensor:
    out = weight.new_zeros(weight.shape[0], weight.shape[1], kt, *weight.shape[2:])
    if method == "centre":
        out[:, :, kt // 2] = weight
    elif method == "average":
        out[:] = (weight / kt).unsqueeze(2)
    else:
        raise ValueError(f"method must be 'centre' or 'average', got {method!r}")
    return out


def inflate_gfpgan_state_dict(
    state_dict_2d: Mapping[str, torch.Tensor],
    config: TemporalSRConfig,
    method: InflationMethod = "centre",
) -> dict[str, torch.Tensor]:
    """Map a 2D GFPGANv1Clean state dict onto ``TemporalSuperResolution(config)``'s keys.

    Raises :class:`WeightsError` naming the keys when the checkpoint does not fit ``config``
    (missing/unexpected keys, shape mismatches). The result loads with ``strict=True``.
    """
    if method not in ("centre", "average"):
        raise ValueError(f"method must be 'centre' or 'average', got {method!r}")
    gfpgan_config_for(config)  # checks unet_input
    with torch.device("meta"):
        target = TemporalSuperResolution(config).state_dict()
    source = {k: v for k, v in state_dict_2d.items() if not k.startswith(DROPPED_PREFIXES)}
    missing = sorted(set(target) - set(source))
    unexpected = sorted(set(source) - set(target))
    if missing or unexpected:
        raise WeightsError(
            f"GFPGAN checkpoint does not match {config}: missing {missing[:8]}"
            f"{' ...' if len(missing) > 8 else ''}, unexpected {unexpected[:8]}{' ...' if len(unexpected) > 8 else ''}"
        )
    out: dict[str, torch.Tensor] = {}
    bad: list[str] = []
    for name, ref in target.items():
        w = source[name].detach().to("cpu", torch.float32)
        if ref.ndim == 5 and w.ndim == 4:
            w = _inflate(w, ref.shape[2], method)
        if tuple(w.shape) != tuple(ref.shape):
            bad.append(f"{name}: checkpoint {tuple(source[name].shape)} vs model {tuple(ref.shape)}")
            continue
        out[name] = w.clone().contiguous()
    if bad:
        raise WeightsError(f"GFPGAN checkpoint shapes do not fit {config}: " + "; ".join(bad[:8]))
    return out


def temporal_sr_from_gfpgan(
    state_dict_2d: Mapping[str, torch.Tensor],
    config: TemporalSRConfig | None = None,
    method: InflationMethod = "centre",
) -> TemporalSuperResolution:
    """A :class:`TemporalSuperResolution` (default: the ``"paper"`` preset) initialised from GFPGAN."""
    config = config if config is not None else TemporalSRConfig.from_preset("paper")
    model = TemporalSuperResolution(config)
    model.load_state_dict(inflate_gfpgan_state_dict(state_dict_2d, config, method), strict=True)
    return model
