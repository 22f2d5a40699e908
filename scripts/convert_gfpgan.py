"""Inflate GFPGAN v1.3/v1.4 ("clean") weights into a TemporalSuperResolution HubModel folder (paper §3.3).

Usage::

    python scripts/convert_gfpgan.py --weights GFPGANv1.3.pth --output weights/temporal_sr_paper
    python scripts/convert_gfpgan.py --weights GFPGANv1.4.pth --output DIR --method average --check

The ``.pth`` is read with ``torch.load(weights_only=True)`` (``params_ema``). Writes ``config.json``,
``model.safetensors`` and a model card; load with ``TemporalSuperResolution.from_pretrained(DIR)``.
``--check`` also builds the 2D GFPGANv1Clean from the same weights and compares both networks on a
static clip of the astronaut photo (max abs diff printed; fails above ``--tolerance``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from metaportrait.convert.gfpgan import gfpgan_config_for, load_gfpgan_state_dict, temporal_sr_from_gfpgan
from metaportrait.errors import MetaPortraitError
from metaportrait.models.temporal_sr import PRESETS, TemporalSRConfig


def _static_clip_check(state_dict: dict, model: torch.nn.Module, config: TemporalSRConfig, frames: int) -> float:
    import torch.nn.functional as F
    from skimage import data

    from metaportrait.models.gfpgan_clean import GFPGANv1Clean
    from metaportrait.tensors import to_tensor

    net2d = GFPGANv1Clean(gfpgan_config_for(config)).eval()
    net2d.load_state_dict(state_dict, strict=True)
    img = to_tensor(data.astronaut())
    low = F.interpolate(img, size=(config.in_size, config.in_size), mode="area")
    with torch.inference_mode():
        ref = net2d(F.interpolate(low, size=(config.out_size,) * 2, mode="bilinear", align_corners=False)).image
        out = model.eval()(low[:, None].repeat(1, frames, 1, 1, 1)).frames
    return float((out - ref[:, None]).abs().max())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", type=Path, required=True, help="GFPGANv1.3.pth / GFPGANv1.4.pth (or .safetensors)")
    parser.add_argument("--output", type=Path, required=True, help="folder to create (must not exist)")
    parser.add_argument("--preset", default="paper", choices=sorted(PRESETS), help="architecture preset (default: paper)")
    parser.add_argument("--method", default="centre", choices=["centre", "average"], help="kernel inflation")
    parser.add_argument("--temporal-kernel-size", type=int, default=None, help="override kt (odd)")
    parser.add_argument("--temporal-convs", default=None, choices=["all", "first_per_block"], help="override")
    parser.add_argument("--key", default=None, help="checkpoint entry (default: params_ema, else params)")
    parser.add_argument("--check", action="store_true", help="compare with the 2D network on a static clip")
    parser.add_argument("--check-frames", type=int, default=3)
    parser.add_argument("--tolerance", type=float, default=1e-4)
    args = parser.parse_args(argv)

    output = args.output.expanduser()
    if output.exists():
        parser.error(f"--output {output} already exists; choose a new folder")
    overrides: dict[str, object] = {}
    if args.temporal_kernel_size is not None:
        overrides["temporal_kernel_size"] = args.temporal_kernel_size
    if args.temporal_convs is not None:
        overrides["temporal_convs"] = args.temporal_convs
    try:
        config = TemporalSRConfig.from_preset(args.preset, **overrides)
        state_dict = load_gfpgan_state_dict(args.weights, key=args.key)
        model = temporal_sr_from_gfpgan(state_dict, config, method=args.method)
        diff = _static_clip_check(state_dict, model, config, args.check_frames) if args.check else None
    except (MetaPortraitError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if diff is not None:
        print(f"static-clip check: max |3D - 2D| = {diff:.3g} (tolerance {args.tolerance:g})")
        if not diff <= args.tolerance:
            print("error: the inflated network does not reproduce the 2D one", file=sys.stderr)
            return 1
    model.save_pretrained(output)
    (output / "conversion.json").write_text(
        json.dumps(
            {
                "source": args.weights.name,
                "method": args.method,
                "preset": args.preset,
                "overrides": overrides,
                "static_clip_max_abs_diff": diff,
                "parameters": model.num_parameters(),
            },
            indent=1,
        )
    )
    print(f"wrote {output} ({model.num_parameters() / 1e6:.2f}M parameters)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
