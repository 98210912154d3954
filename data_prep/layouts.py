"""Find the clips of a raw MEAD or HDTF download and name them.

MEAD: ``{ID}/video/{view}/{emotion}/level_{k}/{NNN}.mp4`` (W021: ``{ID}/video/1/{view}/...``), audio in
``{ID}/audio/{emotion}/level_{k}/{NNN}.m4a``; clip id ``{ID}_{emotion}_{k}_{NNN}``.
HDTF: flat ``*.mp4`` named ``{WRA|RD|WDA}_{Name}{k}_{clip}`` or ``{Name}{k}_{clip}``; clip id = file stem,
video = stem without the clip number, identity = name without the trailing index.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

from dicetalk.constants import EMOTIONS

log = logging.getLogger("data_prep")

_MEAD_ID = re.compile(r"^[MW]\d{3}$")
_LEVEL = re.compile(r"^level_(\d)$")
_HDTF = re.compile(r"^(?:(?:WRA|RD|WDA)_)?(?P<name>.+?)(?P<index>\d*)_(?P<clip>\d+)$")
# Names that only say which subset a video came from; their index is what tells speakers apart.
_GENERIC_HDTF_NAMES = {"Radio"}


@dataclass(frozen=True)
class ClipSpec:
    """One raw clip to prepare."""

    clip_id: str
    dataset: str  # "mead" | "hdtf"
    identity: str
    emotion: str | None
    level: int | None
    video: Path
    audio: Path | None  # separate audio file (MEAD m4a); None = the video's own track


def mead_clips(raw: str | Path, view: str = "front") -> list[ClipSpec]:
    """All MEAD clips of one camera view under ``raw`` (a folder of actor folders), sorted by clip id."""
    raw = Path(raw)
    clips: dict[str, ClipSpec] = {}
    for video in sorted(raw.glob(f"*/video/{view}/*/level_*/*.mp4")) + sorted(
        raw.glob(f"*/video/*/{view}/*/level_*/*.mp4")
    ):
        identity = video.relative_to(raw).parts[0]
        emotion, level_dir, number = video.parent.parent.name, video.parent.name, video.stem
        level = _LEVEL.match(level_dir)
        if not _MEAD_ID.match(identity) or emotion not in EMOTIONS or not level:
            log.warning("skipping %s: not a MEAD clip path", video)
            continue
        clip_id = f"{identity}_{emotion}_{level.group(1)}_{number}"
        audio = raw / identity / "audio" / emotion / level_dir / f"{number}.m4a"
        if clip_id in clips:
            log.warning("skipping %s: clip %s already found at %s", video, clip_id, clips[clip_id].video)
            continue
        clips[clip_id] = ClipSpec(clip_id, "mead", identity, emotion, int(level.group(1)), video, audio)
    return [clips[k] for k in sorted(clips)]


def hdtf_names(stem: str) -> tuple[str, str]:
    """(video id, speaker identity) of an HDTF clip stem, e.g. ``WRA_AdamKinzinger0_000`` ->
    (``WRA_AdamKinzinger0``, ``AdamKinzinger``); ``RD_Radio11_000`` -> (``RD_Radio11``, ``Radio11``)."""
    match = _HDTF.match(stem)
    if not match:
        return stem, stem
    video = stem[: match.start("clip") - 1]
    name = match.group("name")
    identity = name + match.group("index") if name in _GENERIC_HDTF_NAMES else name
    return video, identity


def hdtf_clips(raw: str | Path) -> list[ClipSpec]:
    """All ``*.mp4`` directly inside ``raw`` (raw downloads in sub-folders are ignored), sorted by clip id."""
    clips = []
    for video in sorted(Path(raw).glob("*.mp4")):
        clips.append(ClipSpec(video.stem, "hdtf", hdtf_names(video.stem)[1], None, None, video, None))
    return sorted(clips, key=lambda c: c.clip_id)


def discover(dataset: str, raw: str | Path, view: str = "front") -> list[ClipSpec]:
    """The sorted clip list of a raw dataset folder."""
    if not Path(raw).is_dir():
        raise FileNotFoundError(f"{raw}: raw {dataset} folder not found")
    if dataset == "mead":
        return mead_clips(raw, view)
    if dataset == "hdtf":
        return hdtf_clips(raw)
    raise ValueError(f"unknown dataset {dataset!r}")


def shard(clips: list[ClipSpec], index: int, count: int) -> list[ClipSpec]:
    """Clip k of the sorted list belongs to shard ``k % count``: shards are disjoint and cover every clip."""
    if not 0 <= index < count:
        raise ValueError(f"shard {index} is not in 0..{count - 1}")
    return clips[index::count]
