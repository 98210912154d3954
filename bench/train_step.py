"""Measure one talker training step: wall time and peak memory, for any size on any device.

    python bench/train_step.py --tiny                                   # CPU, tiny configs (runs anywhere)
    python bench/train_step.py --size full --device cuda --frames 25 --pixels 512 --grad-ckpt off on
    python bench/train_step.py --size full --svd /path/to/stable-video-diffusion-img2vid-xt ...

What is timed: EDM noise + talker forward (UNet with every added module) + losses + backward + optimizer
step, on random latents / whisper windows / priors (as when the store holds cached latents; VAE and CLIP
encoding are not included). Without --svd the full config is built with random weights: memory and speed
do not depend on the values. Each configuration runs in a fresh process (clean CUDA peak / CPU RSS).
Peak memory: CUDA torch.cuda.max_memory_allocated; CPU the process's peak RSS (getrusage), which includes
the model itself and the Python runtime.
"""

from __future__ import annotations

import argparse
import itertools
import multiprocessing as mp
import resource
import statistics
import sys
import time
from dataclasses import asdict, dataclass

import torch


@dataclass
class Case:
    size: str
    device: str
    batch: int
    frames: int
    pixels: int
    trainable: str
    grad_ckpt: bool
    precision: str
    optimizer: str
    steps: int
    warmup: int
    svd: str | None
    threads: int | None


def build(case: Case):
    from diffusers import UNetSpatioTemporalConditionModel

    from dicetalk.models.talker import Talker, TalkerConfig, build_talker
    from dicetalk.models.talker.build import SVD_XT_UNET_CONFIG

    if case.size == "tiny":
        talker = build_talker("tiny").talker
        vae_factor = 2
    elif case.svd:
        talker = build_talker("full", svd_path=case.svd).talker
        vae_factor = 8
    else:
        with torch.device(case.device):
            talker = Talker(UNetSpatioTemporalConditionModel(**SVD_XT_UNET_CONFIG), TalkerConfig())
        vae_factor = 8
    return talker.to(case.device), vae_factor


def make_optimizer(params, name: str):
    if name == "adamw":
        return torch.optim.AdamW(params, lr=1e-5)
    if name == "adamw8bit":
        try:
            import bitsandbytes as bnb
        except ImportError as err:
            raise SystemExit("--optimizer adamw8bit needs bitsandbytes (pip install bitsandbytes)") from err
        return bnb.optim.AdamW8bit(params, lr=1e-5)
    raise SystemExit(f"unknown optimizer {name!r}")


def run_case(case: Case) -> dict:
    """Build, run warmup + timed steps, return the measurements."""
    from dicetalk.models.talker import LossWeights, count_parameters
    from dicetalk.models.talker.step import diffusion_step

    torch.manual_seed(0)
    if case.threads:
        torch.set_num_threads(case.threads)
    device = torch.device(case.device)
    talker, factor = build(case)
    params = talker.set_trainable(case.trainable)
    if case.precision == "bf16":
        # Frozen weights in bf16 (autocast computes in bf16 anyway); trainable ones stay fp32 for Adam.
        for p in talker.parameters():
            if not p.requires_grad:
                p.data = p.data.to(torch.bfloat16)
    if case.grad_ckpt:
        talker.unet.enable_gradient_checkpointing()
    talker.train()
    optimizer = make_optimizer(params, case.optimizer)
    cfg = talker.config
    latent = case.pixels // factor
    b, f = case.batch, case.frames
    token_dim = talker.unet.config.cross_attention_dim
    batch = dict(
        clean=torch.randn(b, f, 4, latent, latent, device=device),
        ref_latents=torch.randn(b, 4, latent, latent, device=device),
        image_embeds=torch.randn(b, 1, token_dim, device=device),
        added_time_ids=torch.tensor([[12.5, 8.0, 16.0]] * b, device=device),
        whisper=torch.randn(b, f, cfg.whisper_window, cfg.whisper_layers, cfg.whisper_dim, device=device),
        prior=torch.randn(b, cfg.prior_dim, device=device),
        face_mask=torch.ones(b, 1, case.pixels, case.pixels, device=device),
        labels=torch.zeros(b, dtype=torch.long, device=device),
    )

    weights = LossWeights()
    inputs = {k: v for k, v in batch.items() if k != "clean"}

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=case.precision == "bf16"):
            loss = diffusion_step(talker, batch["clean"], weights=weights, **inputs).loss
        loss.backward()
        talker.clear_context()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(case.warmup):
        step()
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(case.steps):
        start = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - start)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device)
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    return {
        **asdict(case),
        "trainable_params": count_parameters(params),
        "total_params": count_parameters(talker),
        "step_s": statistics.median(times),
        "peak_gib": peak / 2**30,
    }


def _worker(case: Case, queue) -> None:
    try:
        queue.put(run_case(case))
    except torch.OutOfMemoryError:
        queue.put({**asdict(case), "error": "out of memory"})
    except Exception as err:  # report and go on with the next configuration
        queue.put({**asdict(case), "error": f"{type(err).__name__}: {err}"})


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="shorthand for --size tiny --device cpu --pixels 32")
    p.add_argument("--size", choices=["tiny", "full"], default="tiny")
    p.add_argument("--svd", help="local stable-video-diffusion-img2vid-xt folder (full size; default: random weights)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch", type=int, nargs="+", default=[1])
    p.add_argument("--frames", type=int, nargs="+", default=[25])
    p.add_argument("--pixels", type=int, default=512, help="frame side in pixels (latents are pixels / VAE factor)")
    p.add_argument("--trainable", nargs="+", default=["new"], choices=["new", "attention", "all"])
    p.add_argument("--grad-ckpt", nargs="+", default=["on"], choices=["on", "off"])
    p.add_argument("--precision", choices=["bf16", "fp32"], default=None, help="default bf16 on cuda, fp32 on cpu")
    p.add_argument("--optimizer", nargs="+", default=["adamw"], choices=["adamw", "adamw8bit"])
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (--tiny: 1)")
    args = p.parse_args(argv)
    if args.tiny:
        args.size, args.device = "tiny", "cpu"
        if args.pixels == 512:
            args.pixels = 32
        if args.frames == [25]:
            args.frames = [8]
        args.batch = [2] if args.batch == [1] else args.batch
        args.threads = args.threads or 1
    precision = args.precision or ("bf16" if args.device.startswith("cuda") else "fp32")
    cases = [
        Case(args.size, args.device, b, f, args.pixels, t, g == "on", precision, o, args.steps, args.warmup, args.svd,
             args.threads)
        for b, f, t, g, o in itertools.product(args.batch, args.frames, args.trainable, args.grad_ckpt, args.optimizer)
    ]
    ctx = mp.get_context("spawn")
    rows = []
    for case in cases:
        queue = ctx.Queue()
        proc = ctx.Process(target=_worker, args=(case, queue))
        proc.start()
        proc.join()
        rows.append(queue.get() if not queue.empty() else {**asdict(case), "error": f"exit code {proc.exitcode}"})
    header = f"{'size':5} {'device':7} {'B':>2} {'F':>3} {'px':>4} {'trainable':9} {'ckpt':4} {'prec':4} {'optim':9} {'train params':>13} {'step s':>8} {'peak GiB':>9}"
    print(header)
    print("-" * len(header))
    for r in rows:
        head = (f"{r['size']:5} {r['device']:7} {r['batch']:>2} {r['frames']:>3} {r['pixels']:>4} {r['trainable']:9} "
                f"{'on' if r['grad_ckpt'] else 'off':4} {r['precision']:4} {r['optimizer']:9}")
        if "error" in r:
            print(f"{head} {r['error']}")
        else:
            print(f"{head} {r['trainable_params']:>13,} {r['step_s']:>8.3f} {r['peak_gib']:>9.2f}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
