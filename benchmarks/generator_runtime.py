"""Generator runtimes side by side: eager PyTorch (fp32, bf16 autocast), channels_last, ONNX Runtime, torch.compile.

The embedded demo generator with its flow and residual heads made non-zero (as a personalized
adapter makes them; with zero heads the pipeline skips the networks altogether), timed per frame at
batch 1 (live) and batch 8 (reenact), each checked against eager PyTorch on the same input. Also
reports the one-off start-up cost (export or compilation).
Usage: ``python benchmarks/generator_runtime.py [--threads 2] [--runs 20] [--no-compile]``.
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--no-compile", action="store_true", help="skip torch.compile (about a minute to compile)")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    import torch

    from metaportrait.models.generator import MetaPortraitGenerator
    from metaportrait.runtime import GeneratorRuntime

    torch.set_num_threads(args.threads)
    gen = MetaPortraitGenerator.from_pretrained(REPO / "weights" / "base").eval()
    torch.manual_seed(0)
    with torch.no_grad():
        gen.warping.flow_head.weight.normal_(0, 1e-3)
        gen.refinement.head.weight.normal_(0, 1e-2)
    s = gen.config.image_size
    backends = ["eager", "eager_bf16", "channels_last", "onnx"] + ([] if args.no_compile else ["compile"])
    rows = []
    for batch in (int(b) for b in args.batches.split(",")):
        g = torch.Generator().manual_seed(batch)
        x = [torch.rand(batch, 3, s, s, generator=g) * 2 - 1 for _ in range(3)]
        x += [torch.randn(batch, gen.config.identity_dim, generator=g), torch.rand(batch, s, s, 2, generator=g) * 2 - 1]
        ref = None
        for name in backends:
            t0 = time.perf_counter()
            if name == "eager_bf16":  # bf16 autocast on the CPU (fast only where the CPU has bf16 units)
                eager = GeneratorRuntime(gen, "eager")

                def run(*a, _e=eager):
                    with torch.autocast("cpu", dtype=torch.bfloat16):
                        return tuple(t.float() for t in _e(*a))
                inputs = x
            elif name == "channels_last":
                run = GeneratorRuntime(gen.to(memory_format=torch.channels_last), "eager")
                inputs = [t.contiguous(memory_format=torch.channels_last) if t.ndim == 4 and t.shape[1] == 3 else t
                          for t in x]
            else:
                run = GeneratorRuntime(gen.to(memory_format=torch.contiguous_format), name)
                inputs = x
            out = run(*inputs)  # first call: export / compile
            start = time.perf_counter() - t0
            run(*inputs)
            times = []
            for _ in range(args.runs):
                t = time.perf_counter()
                run(*inputs)
                times.append(time.perf_counter() - t)
            if ref is None:
                ref = out
            err = max(float((a - b).abs().max()) for a, b in zip(out, ref))
            rows.append((batch, name, 1000 * statistics.median(times) / batch, start, err))
    print(f"\nCPU threads: {args.threads}; torch {torch.__version__}; median of {args.runs} runs; "
          f"generator {sum(p.numel() for p in gen.parameters()) / 1e6:.2f}M parameters at {s}²\n")
    print("| batch | backend | ms a frame | × eager | first call s (export/compile) | max |Δ| vs eager |")
    print("|---|---|---|---|---|---|")
    eager = {b: ms for b, n, ms, _, _ in rows if n == "eager"}
    for batch, name, ms, start, err in rows:
        print(f"| {batch} | {name} | {ms:.1f} | {ms / eager[batch]:.2f} | {start:.1f} | {err:.1e} |")


if __name__ == "__main__":
    main()
