"""Parameter counts and CPU speed of the generator presets, with FOMM vox-256 as the reference row.

Speed targets are ratios to a reference timed in the same run (README "Speed": absolute CPU
times moved 2× between our machines while ratios held). The reference is First Order Motion
Model (Siarohin et al. 2019), ``config/vox-256.yaml``: keypoint detector (hourglass, 10 keypoints
with jacobians) + occlusion-aware generator (dense motion hourglass, 2 down blocks, 6 residual
bottleneck blocks, 2 up blocks, block_expansion 64, max_features 512), rebuilt here from the
public architecture with random weights (about 59.8M parameters, as the paper's table says).

Each cell is the median of 5 timed runs (after 1 warm-up) in ms per frame, 2 threads, fp32 or
bf16 autocast, batch 1 and 8. The "paper" preset is timed at batch 1 only.

Usage: ``python benchmarks/networks.py [--presets demo,paper,...] [--runs 5] [--threads 2]``
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from metaportrait.models.generator import PRESETS, MetaPortraitGenerator, generator_config
from metaportrait.models.layers import make_identity_grid

# --------------------------------------------------------------------------------------------
# FOMM vox-256, compact re-implementation of the public architecture (random weights)
# --------------------------------------------------------------------------------------------


class _Down(nn.Sequential):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(), nn.AvgPool2d(2))


class _Up(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0))


class _Same(nn.Sequential):
    def __init__(self, cin: int, cout: int, k: int = 3) -> None:
        super().__init__(nn.Conv2d(cin, cout, k, padding=k // 2), nn.BatchNorm2d(cout), nn.ReLU())


class _Res(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.BatchNorm2d(c), nn.ReLU(), nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU(), nn.Conv2d(c, c, 3, padding=1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class _Hourglass(nn.Module):
    """FOMM's Hourglass: Encoder of DownBlock2d, Decoder of UpBlock2d with skip concatenation."""

    def __init__(self, be: int, cin: int, num_blocks: int, max_f: int) -> None:
        super().__init__()
        w = lambda i: min(max_f, be * 2**i)  # noqa: E731
        self.down = nn.ModuleList(_Down(cin if i == 0 else w(i), w(i + 1)) for i in range(num_blocks))
        self.up = nn.ModuleList(
            _Up((1 if i == num_blocks - 1 else 2) * w(i + 1), w(i)) for i in reversed(range(num_blocks))
        )
        self.out_filters = be + cin

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = [x]
        for d in self.down:
            outs.append(d(outs[-1]))
        out = outs.pop()
        for u in self.up:
            out = torch.cat([u(out), outs.pop()], dim=1)
        return out


class _AntiAlias(nn.Module):
    """Gaussian blur + subsampling (FOMM's AntiAliasInterpolation2d)."""

    def __init__(self, channels: int, scale: float) -> None:
        super().__init__()
        sigma = (1 / scale - 1) / 2
        k = 2 * round(sigma * 4) + 1
        ax = torch.arange(k, dtype=torch.float32) - (k - 1) / 2
        g = torch.exp(-(ax**2) / (2 * sigma**2))
        kernel = torch.outer(g, g)
        kernel = kernel / kernel.sum()
        self.register_buffer("weight", kernel.expand(channels, 1, k, k).contiguous())
        self.pad = k // 2
        self.step = int(1 / scale)
        self.groups = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.conv2d(F.pad(x, [self.pad] * 4), self.weight.to(x.dtype), groups=self.groups)
        return x[:, :, :: self.step, :: self.step]


def _coordinate_grid(h: int, w: int, like: torch.Tensor) -> torch.Tensor:
    x = 2 * (torch.arange(w, dtype=like.dtype, device=like.device) / (w - 1)) - 1
    y = 2 * (torch.arange(h, dtype=like.dtype, device=like.device) / (h - 1)) - 1
    yy, xx = torch.meshgrid(y, x, indexing="ij")
    return torch.stack([xx, yy], dim=-1)


class FommKPDetector(nn.Module):
    def __init__(self, num_kp: int = 10) -> None:
        super().__init__()
        self.predictor = _Hourglass(32, 3, 5, 1024)
        self.kp = nn.Conv2d(self.predictor.out_filters, num_kp, 7)
        self.jacobian = nn.Conv2d(self.predictor.out_filters, 4 * num_kp, 7)
        self.down = _AntiAlias(3, 0.25)
        self.num_kp = num_kp

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feat = self.predictor(self.down(x))
        pred = self.kp(feat)
        b, k, h, w = pred.shape
        heat = F.softmax(pred.flatten(2) / 0.1, dim=2).view(b, k, h, w)
        grid = _coordinate_grid(h, w, heat)
        value = (heat.unsqueeze(-1) * grid).sum(dim=(2, 3))
        jac = self.jacobian(feat).view(b, k, 4, h, w)
        jac = (heat.unsqueeze(2) * jac).sum(dim=(3, 4)).view(b, k, 2, 2)
        return value, jac


class FommDenseMotion(nn.Module):
    def __init__(self, num_kp: int = 10) -> None:
        super().__init__()
        self.hourglass = _Hourglass(64, (num_kp + 1) * 4, 5, 1024)
        self.mask = nn.Conv2d(self.hourglass.out_filters, num_kp + 1, 7, padding=3)
        self.occlusion = nn.Conv2d(self.hourglass.out_filters, 1, 7, padding=3)
        self.down = _AntiAlias(3, 0.25)
        self.num_kp = num_kp

    def forward(self, source, kp_d, jac_d, kp_s, jac_s):  # noqa: ANN001, ANN201
        src = self.down(source)
        b, _, h, w = src.shape
        grid = _coordinate_grid(h, w, src)  # h×w×2
        kp_d_ = kp_d.view(b, -1, 1, 1, 2)
        kp_s_ = kp_s.view(b, -1, 1, 1, 2)
        g_d = torch.exp(-0.5 * ((grid - kp_d_) ** 2).sum(-1) / 0.01)
        g_s = torch.exp(-0.5 * ((grid - kp_s_) ** 2).sum(-1) / 0.01)
        heat = torch.cat([torch.zeros_like(g_d[:, :1]), g_d - g_s], dim=1).unsqueeze(2)  # B×K+1×1×h×w
        coord = grid.view(1, 1, h, w, 2) - kp_d_
        jac = torch.matmul(jac_s, torch.inverse(jac_d)).view(b, -1, 1, 1, 2, 2)
        coord = torch.matmul(jac, coord.unsqueeze(-1)).squeeze(-1) + kp_s_
        sparse = torch.cat([grid.view(1, 1, h, w, 2).expand(b, 1, h, w, 2), coord], dim=1)  # B×K+1×h×w×2
        rep = src.unsqueeze(1).expand(b, self.num_kp + 1, 3, h, w).reshape(-1, 3, h, w)
        deformed = F.grid_sample(rep, sparse.reshape(-1, h, w, 2), align_corners=True).view(b, -1, 3, h, w)
        inp = torch.cat([heat, deformed], dim=2).view(b, -1, h, w)
        pred = self.hourglass(inp)
        mask = F.softmax(self.mask(pred), dim=1).unsqueeze(-1)
        deformation = (sparse * mask).sum(dim=1)
        return deformation, torch.sigmoid(self.occlusion(pred))


class FommGenerator(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.dense_motion = FommDenseMotion()
        self.first = _Same(3, 64, 7)
        self.down = nn.Sequential(_Down(64, 128), _Down(128, 256))
        self.bottleneck = nn.Sequential(*[_Res(256) for _ in range(6)])
        self.up = nn.Sequential(_Up(256, 128), _Up(128, 64))
        self.final = nn.Conv2d(64, 3, 7, padding=3)

    def forward(self, source, kp_d, jac_d, kp_s, jac_s):  # noqa: ANN001, ANN201
        out = self.down(self.first(source))
        deformation, occlusion = self.dense_motion(source, kp_d, jac_d, kp_s, jac_s)
        out = F.grid_sample(out, deformation, align_corners=True) * occlusion
        deformed = F.grid_sample(source, F.interpolate(deformation.permute(0, 3, 1, 2), size=source.shape[-2:], mode="bilinear").permute(0, 2, 3, 1), align_corners=True)
        out = torch.sigmoid(self.final(self.up(self.bottleneck(out))))
        return out, deformed


class FommVox256(nn.Module):
    """KP detector + generator; one frame = keypoints of the driving frame + generation
    (the source keypoints are computed once per video, as in FOMM's demo)."""

    def __init__(self) -> None:
        super().__init__()
        self.kp_detector = FommKPDetector()
        self.generator = FommGenerator()

    def forward(self, source: torch.Tensor, driving: torch.Tensor, kp_s: torch.Tensor, jac_s: torch.Tensor):  # noqa: ANN201
        kp_d, jac_d = self.kp_detector(driving)
        return self.generator(source, kp_d, jac_d, kp_s, jac_s)


# --------------------------------------------------------------------------------------------
# timing
# --------------------------------------------------------------------------------------------


def time_ms_per_frame(fn: Callable[[], object], batch: int, runs: int, dtype: str) -> float:
    if dtype == "bf16":
        ctx: Callable[[], contextlib.AbstractContextManager] = lambda: torch.autocast("cpu", dtype=torch.bfloat16)  # noqa: E731
    elif dtype == "fp32":
        ctx = contextlib.nullcontext
    else:
        raise ValueError(f"unknown dtype {dtype!r}")
    times = []
    with torch.inference_mode():
        for i in range(runs + 1):
            with ctx():
                t0 = time.perf_counter()
                fn()
                dt = time.perf_counter() - t0
            if i > 0:
                times.append(dt)
    return 1000.0 * statistics.median(times) / batch


def fomm_case(batch: int) -> tuple[nn.Module, Callable[[], object]]:
    torch.manual_seed(0)
    model = FommVox256().eval()
    x = torch.rand(batch, 3, 256, 256)
    with torch.inference_mode():
        kp_s, jac_s = model.kp_detector(x)
    return model, lambda: model(x, x.flip(-1), kp_s, jac_s)


def preset_case(name: str, batch: int) -> tuple[nn.Module, Callable[[], object]]:
    torch.manual_seed(0)
    cfg = generator_config(name)
    model = MetaPortraitGenerator(cfg).eval()
    s = cfg.image_size
    src = torch.rand(batch, 3, s, s) * 2 - 1
    lms = torch.rand(batch, 3, s, s) * 2 - 1
    lmd = torch.rand(batch, 3, s, s) * 2 - 1
    ident = torch.randn(batch, cfg.identity_dim)
    prior = None
    if cfg.use_prior:
        prior = make_identity_grid(batch, s, s) + 0.02 * torch.randn(batch, s, s, 2)
    return model, lambda: model(src, lms, lmd, ident, prior)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", default=",".join(PRESETS), help="comma-separated preset names")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--dtypes", default="fp32,bf16", help="fp32 and/or bf16 (autocast)")
    ap.add_argument(
        "--reference-batches",
        default=None,
        help="batches at which FOMM is timed (default: --batches); a missing one is compared with FOMM's batch-1 time (marked *)",
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    batches = [int(b) for b in args.batches.split(",")]
    ref_batches = [int(b) for b in (args.reference_batches or args.batches).split(",")]
    if 1 not in ref_batches:
        raise ValueError(f"--reference-batches must include 1, got {args.reference_batches!r}")
    dtypes = [d for d in args.dtypes.split(",") if d]
    rows: list[tuple[str, int, dict[tuple[int, str], float]]] = []
    names = ["FOMM vox-256"] + [n for n in args.presets.split(",") if n]
    for name in names:
        cells: dict[tuple[int, str], float] = {}
        params = 0
        for b in ref_batches if name == "FOMM vox-256" else batches:
            if name == "paper" and b != 1:
                continue
            model, fn = fomm_case(b) if name == "FOMM vox-256" else preset_case(name, b)
            params = sum(p.numel() for p in model.parameters())
            for dt in dtypes:
                cells[(b, dt)] = time_ms_per_frame(fn, b, args.runs, dt)
            del model, fn
        rows.append((name, params, cells))
        print(f"  measured {name}: " + ", ".join(f"b{b} {dt} {v:.1f} ms" for (b, dt), v in cells.items()), flush=True)

    ref = rows[0][2]
    cols = [(b, dt) for b in batches for dt in dtypes]
    header = "| network | params (M) | " + " | ".join(f"b{b} {dt} ms/frame (×FOMM)" for b, dt in cols) + " |"
    print()
    print(f"torch {torch.__version__}, {args.threads} threads, median of {args.runs} runs, 256² unless the preset says otherwise")
    print("(ratio) = ms/frame divided by FOMM's at the same batch and precision; * = FOMM timed at batch 1 only")
    print(header)
    print("|" + "---|" * (2 + len(cols)))
    for name, params, cells in rows:
        parts = []
        for c in cols:
            if c in cells:
                mark = "" if c in ref else "*"
                base = ref[c] if c in ref else ref[(1, c[1])]
                parts.append(f"{cells[c]:.1f} ({cells[c] / base:.3f}{mark})")
            else:
                parts.append("—")
        print(f"| {name} | {params / 1e6:.2f} | " + " | ".join(parts) + " |")


if __name__ == "__main__":
    main()
