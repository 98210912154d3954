"""`dicetalk generate`, `dicetalk import-official` and `dicetalk eval`: argparse sub-commands.

    dicetalk generate --talker CKPT --image IMG --audio WAV --emotion happy --priors PRIORS --out out.mp4
    dicetalk import-official --dir checkpoints/DICE-Talk --out dicetalk_released.safetensors
    dicetalk eval --config configs/eval.yaml [--stage generate --shard I --num-shards N | --stage metrics]
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path

from dicetalk.constants import EMOTIONS


def _guard(command: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Expected failures (bad files, missing inputs) -> one line on stderr and exit status 2."""

    def run(args: argparse.Namespace) -> int:
        from dicetalk.audio import WhisperError
        from dicetalk.evaluate import EvalError
        from dicetalk.face import FaceError
        from dicetalk.media import MediaError

        try:
            return command(args)
        except (EvalError, FaceError, MediaError, WhisperError, FileNotFoundError, ValueError, KeyError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 2

    return run


# ------------------------------------------------------------------------------------------------ generate


def add_generate_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """``dicetalk generate``: one portrait + audio + emotion -> mp4 with the audio muxed in."""
    from dicetalk.pipeline import SamplingConfig

    d = SamplingConfig()
    p = subparsers.add_parser("generate", help="portrait + audio + emotion -> talking video (mp4)")
    p.add_argument("--talker", required=True, help="talker checkpoint (.ckpt from training, or .safetensors)")
    p.add_argument("--svd", help="stable-video-diffusion-img2vid-xt folder (default: the checkpoint's base)")
    p.add_argument("--image", required=True, help="portrait image")
    p.add_argument("--audio", required=True, help="speech (wav, m4a, mp4, ...)")
    p.add_argument("--emotion", default="neutral",
                   help=f"a label ({', '.join(EMOTIONS)}; needs --priors), a prior .npy, or a reference video "
                        "(needs --embedder)")
    p.add_argument("--emotion-b", help="second emotion (same forms) to mix with --emotion")
    p.add_argument("--mix", type=float, default=0.5, help="weight of --emotion-b (0 = only --emotion)")
    p.add_argument("--schedule", help='emotions over time, e.g. "0:neutral,2.5:happy" (overrides --emotion)')
    p.add_argument("--transition", type=float, default=0.5, help="schedule cross-fade in seconds")
    p.add_argument("--priors", help="folder of preset priors {emotion}.npy (released or exported format)")
    p.add_argument("--embedder", help="stage-1 embedder checkpoint (emotion from a reference video)")
    p.add_argument("--whisper", default="openai/whisper-tiny", help="whisper-tiny folder or hub id")
    p.add_argument("--landmarks", default="face_alignment", choices=("face_alignment", "sidecar"),
                   help="face landmarks for the crop (sidecar: IMG stem + .landmarks.npy)")
    p.add_argument("--no-crop", action="store_true", help="the image is already an aligned face crop")
    p.add_argument("--size", type=int, default=512, help="output side in pixels (tiny models: 32 or 64)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=d.steps)
    p.add_argument("--ref-scale", type=float, default=d.ref_scale, help="reference guidance s1")
    p.add_argument("--cond-scale", type=float, default=d.cond_scale, help="audio + emotion guidance s2")
    p.add_argument("--emotion-scale", type=float, default=d.emotion_scale,
                   help="extra emotion guidance (ours; 0 = the released three-way guidance)")
    p.add_argument("--frame-stride", type=int, default=d.frame_stride, choices=(1, 2),
                   help="2: generate 12.5 fps and blend to 25 fps (released); 1: 25 fps directly")
    p.add_argument("--device", default="auto")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--out", required=True, help="output .mp4")
    p.set_defaults(func=_guard(_cmd_generate))
    return p


def _cmd_generate(args: argparse.Namespace) -> int:
    import numpy as np

    from dicetalk import media
    from dicetalk.audio import WhisperFeatures
    from dicetalk.constants import SAMPLES_PER_FRAME
    from dicetalk.evaluate import resolve_device
    from dicetalk.pipeline import (DiceTalkPipeline, GenerationInput, SamplingConfig, audio_frames, frame_priors,
                                   mix_priors, parse_schedule, prepare_portrait, resolve_emotion, video_prior_fn)

    device = resolve_device(args.device)
    audio = media.read_audio(args.audio)
    n_frames = audio_frames(audio)
    if n_frames < 1:
        raise ValueError(f"{args.audio}: shorter than one video frame (40 ms)")
    video_prior = None
    if args.embedder:
        video_prior = video_prior_fn(args.embedder, args.whisper, args.landmarks, str(device))

    def prior(spec: str) -> np.ndarray:
        return resolve_emotion(spec, args.priors, video_prior)

    if args.schedule:
        keyframes = [(t, prior(spec)) for t, spec in parse_schedule(args.schedule)]
    else:
        base = prior(args.emotion)
        keyframes = [(0.0, mix_priors(base, prior(args.emotion_b), args.mix) if args.emotion_b else base)]
    priors = frame_priors(n_frames, keyframes, args.transition)
    reference, face_box = prepare_portrait(args.image, args.size, crop=not args.no_crop, landmarks=args.landmarks,
                                           device=str(device))
    whisper = WhisperFeatures(args.whisper, device=str(device))(audio, n_frames)
    config = SamplingConfig(steps=args.steps, ref_scale=args.ref_scale, cond_scale=args.cond_scale,
                            emotion_scale=args.emotion_scale, frame_stride=args.frame_stride)
    pipeline = DiceTalkPipeline.from_checkpoint(args.talker, args.svd, config=config, device=device,
                                                progress=not args.no_progress)
    frames = pipeline(GenerationInput(reference, face_box, whisper, priors, n_frames), seed=args.seed)
    media.write_video(args.out, frames, 25, audio=audio[: n_frames * SAMPLES_PER_FRAME])
    print(f"{args.out}: {len(frames)} frames at 25 fps, {frames.shape[2]}x{frames.shape[1]}")
    return 0


# ------------------------------------------------------------------------------------------ import-official


def add_import_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """``dicetalk import-official``: released DICE-Talk .pth files -> one talker checkpoint."""
    p = subparsers.add_parser("import-official", help="convert the released DICE-Talk checkpoints")
    p.add_argument("--dir", required=True, help="folder with audio_linear.pth, emo_model.pth, pose_guider.pth, unet.pth")
    p.add_argument("--out", required=True, help="output .safetensors (load with --talker)")
    p.add_argument("--base", default=None,
                   help="svd-img2vid-xt folder or hub id recorded as the checkpoint's base "
                        "(default: stabilityai/stable-video-diffusion-img2vid-xt)")
    p.add_argument("--strict", action="store_true", help="fail (exit 1) when any key could not be placed")
    p.set_defaults(func=_guard(_cmd_import))
    return p


def _cmd_import(args: argparse.Namespace) -> int:
    from dicetalk.official import SVD_XT_ID, import_official

    report = import_official(args.dir, args.out, base=args.base or SVD_XT_ID)
    print(report.render())
    print(f"wrote {args.out}")
    return 1 if args.strict and (report.unplaced or report.missing_files) else 0


# ---------------------------------------------------------------------------------------------------- eval


def add_eval_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """``dicetalk eval``: generate the test set and compute Tables 1 and 2."""
    p = subparsers.add_parser("eval", help="evaluation protocol: test-set videos, FVD/FID/Sync/Emo-Score tables")
    p.add_argument("--config", help="YAML config (configs/eval.yaml); flags below override it")
    p.add_argument("--store")
    p.add_argument("--talker")
    p.add_argument("--out")
    p.add_argument("--svd")
    p.add_argument("--priors")
    p.add_argument("--embedder")
    p.add_argument("--device")
    p.add_argument("--steps", type=int, dest="sampling.steps")
    p.add_argument("--max-frames", type=int, dest="max_frames")
    p.add_argument("--random-backbones", action="store_const", const=True, dest="random_backbones",
                   help="metric architectures with RANDOM weights (demo/tests; results are labelled random)")
    p.add_argument("--stage", default="all", choices=("all", "generate", "metrics"))
    p.add_argument("--shard", default="0", help="this shard's index, or 'slurm' ($SLURM_ARRAY_TASK_ID)")
    p.add_argument("--num-shards", default="1", help="number of shards, or 'slurm' ($SLURM_ARRAY_TASK_COUNT)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_guard(_cmd_eval))
    return p


def _shard_value(text: str, env: str) -> int:
    if text == "slurm":
        if env not in os.environ:
            raise ValueError(f"--shard/--num-shards slurm: ${env} is not set (not inside a SLURM array job)")
        text = os.environ[env]
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"shard value {text!r} is not an integer") from None


def _cmd_eval(args: argparse.Namespace) -> int:
    from dicetalk.evaluate import evaluate, load_config, print_tables

    keys = ("store", "talker", "out", "svd", "priors", "embedder", "device", "sampling.steps", "max_frames",
            "random_backbones")
    cfg = load_config(args.config, {k: getattr(args, k) for k in keys})
    shard = _shard_value(args.shard, "SLURM_ARRAY_TASK_ID")
    num_shards = _shard_value(args.num_shards, "SLURM_ARRAY_TASK_COUNT")
    results = evaluate(cfg, args.stage, shard, num_shards, progress=not args.no_progress)
    if results is not None:
        print_tables(results)
        print(f"results: {Path(cfg.out) / 'results.md'} (.json, .csv, .png)")
    return 0
