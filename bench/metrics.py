"""Benchmark: Frechet distance (ours vs scipy sqrtm) and the Sync offset search (ours vs loops).

    python bench/metrics.py [--device cuda] [--threads N]

Checks that both sides give the same numbers and prints the time ratios. The offset search is compared
with a per-shift loop (one pairwise_distance per shift, the natural loop) and with syncnet_python's
per-frame loop (calc_pdist). Times are the best of several repeats. For each size it also prints the
bound on any exact method: the time of the unavoidable n x 31 dot products of 1024 terms, at the
machine's float32 GEMM peak and as torch's batched product alone.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import scipy.linalg
import torch
import torch.nn.functional as F

from dicetalk.metrics import frechet_distance, sync_offset_search


def best_time(fn, device: torch.device, repeats: int, warm_up: bool = True) -> tuple[float, object]:
    """Best wall time of ``repeats`` calls (after an optional warm-up call) and the last result."""
    if warm_up:
        fn()
    best = float("inf")
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        result = fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best, result


def scipy_frechet(mu1, s1, mu2, s2) -> float:
    """pytorch-fid's formula: scipy sqrtm of the product, real part of the trace."""
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean).real)


def bench_frechet(dim: int, n: int, repeats: int) -> None:
    rng = np.random.default_rng(0)
    mix = rng.standard_normal((dim, dim)) / np.sqrt(dim)
    real = rng.standard_normal((n, dim)) @ mix
    fake = rng.standard_normal((n, dim)) @ (mix + 0.05 * rng.standard_normal((dim, dim)) / np.sqrt(dim)) + 0.1
    stats = [real.mean(0), np.cov(real, rowvar=False), fake.mean(0), np.cov(fake, rowvar=False)]
    cpu = torch.device("cpu")
    t_ours, ours = best_time(lambda: frechet_distance(*stats), cpu, repeats, warm_up=False)
    t_ref, ref = best_time(lambda: scipy_frechet(*stats), cpu, repeats, warm_up=False)
    rel = abs(ours - ref) / abs(ref)
    print(f"frechet d={dim} N={n}: ours {ours:.6f} ({t_ours * 1e3:.0f} ms)  scipy sqrtm {ref:.6f} "
          f"({t_ref * 1e3:.0f} ms)  rel diff {rel:.1e}  speed-up x{t_ref / t_ours:.1f}")
    assert rel < 1e-6, "Frechet distance differs from scipy"


def per_shift_loop(v: torch.Tensor, a: torch.Tensor, vshift: int) -> tuple[int, float, float]:
    """One pairwise_distance over all frames per shift."""
    n = len(v)
    a_pad = F.pad(a, (0, 0, vshift, vshift))
    mdist = torch.stack([F.pairwise_distance(v, a_pad[k:k + n]).mean() for k in range(2 * vshift + 1)])
    best = int(mdist.argmin())
    return vshift - best, float(mdist[best]), float(mdist.median() - mdist[best])


def per_frame_loop(v: torch.Tensor, a: torch.Tensor, vshift: int) -> tuple[int, float, float]:
    """syncnet_python's calc_pdist: all shifts of one frame per step."""
    width = 2 * vshift + 1
    a_pad = F.pad(a, (0, 0, vshift, vshift))
    dists = torch.stack([F.pairwise_distance(v[[i]].repeat(width, 1), a_pad[i:i + width])
                         for i in range(len(v))])
    mdist = dists.mean(0)
    best = int(mdist.argmin())
    return vshift - best, float(mdist[best]), float(mdist.median() - mdist[best])


def gemm_rate(device: torch.device, size: int = 2048) -> float:
    """Multiply-add throughput (FLOP/s) of a large float32 matrix product: the machine's practical peak."""
    x = torch.randn(size, size, device=device)
    t, _ = best_time(lambda: x @ x, device, 3)
    return 2 * size**3 / t


def bench_sync(n: int, device: torch.device, repeats: int, peak: float, vshift: int = 15,
               dim: int = 1024) -> None:
    g = torch.Generator().manual_seed(n)
    v = torch.randn(n + 10, dim, generator=g) * 3
    a = (v.roll(-3, 0) + torch.randn(n + 10, dim, generator=g))[:n].to(device)  # audio leads by 3
    v = v[:n].to(device)
    t_ours, ours = best_time(lambda: sync_offset_search(v, a, vshift), device, repeats)
    line = [f"sync search n={n} D={dim} {device.type}: ours {t_ours * 1e3:.3f} ms"]
    for name, loop in (("per-shift loop", per_shift_loop), ("per-frame loop", per_frame_loop)):
        t_loop, ref = best_time(lambda: loop(v, a, vshift), device, max(repeats // 4, 2))
        if loop is per_shift_loop:
            t_shift = t_loop
        same = ours[0] == ref[0] and np.allclose(ours[1:], ref[1:], rtol=1e-4, atol=1e-5)
        assert same, f"offset search differs from the {name}: {ours} vs {ref}"
        line.append(f"{name} {t_loop * 1e3:.3f} ms (x{t_loop / t_ours:.1f}, same numbers)")
    print("  ".join(line) + f"  -> offset {ours[0]}, Sync-D {ours[1]:.4f}, Sync-C {ours[2]:.4f}")
    # Any exact method computes the n x (2 vshift + 1) dot products of D terms; at the peak rate that
    # alone takes `floor` seconds, which caps the speed-up any implementation can show over the loop.
    floor = 2 * n * (2 * vshift + 1) * dim / peak
    windows = F.pad(a, (0, 0, vshift, vshift)).unfold(0, 2 * vshift + 1, 1)
    t_band, _ = best_time(lambda: torch.bmm(v.unsqueeze(1), windows), device, repeats)
    print(f"    bound: the {n} x {2 * vshift + 1} dot products alone take {floor * 1e3:.3f} ms at the GEMM "
          f"peak (x{t_shift / floor:.1f} over the per-shift loop) and {t_band * 1e3:.3f} ms as torch's "
          f"batched product that ours runs (x{t_shift / t_band:.1f}, the most ours can reach here)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="device for the offset search (cpu or cuda)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--skip-frechet", action="store_true")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads")
    if not args.skip_frechet:
        bench_frechet(2048, 4096, repeats=1)  # seconds per call: one timed call each
    device = torch.device(args.device)
    peak = gemm_rate(device)
    print(f"float32 GEMM peak on {device.type}: {peak / 1e9:.0f} GFLOP/s")
    for n in (50, 100, 250, 1000):
        bench_sync(n, device, args.repeats, peak)


if __name__ == "__main__":
    main()
