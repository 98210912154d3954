"""Synthetic MEAD / HDTF raw data: the embedded default data set for the demo and the tests.

    python -m data_prep.synthetic --out DIR [options]

writes real files in the real raw layouts, so the preprocessing reads them exactly as it reads downloads:

    DIR/mead/{ID}/video/front/{emotion}/level_{k}/{NNN}.mp4      H.264, 30 fps like real MEAD, no audio track
    DIR/mead/{ID}/video/front/{emotion}/level_{k}/{NNN}.landmarks.npy
    DIR/mead/{ID}/audio/{emotion}/level_{k}/{NNN}.m4a            AAC, 16 kHz mono, same duration as the video
    DIR/hdtf/{WRA|RD|WDA}_{Name}{k}_{clip:03d}.mp4               H.264 25 fps + AAC 16 kHz mono track
    DIR/hdtf/{WRA|RD|WDA}_{Name}{k}_{clip:03d}.landmarks.npy
    DIR/synthetic.json                                           the settings, to regenerate the same set

``{stem}.landmarks.npy`` is the ground truth of the drawn face: float32 (T, 68, 2) pixel coordinates in the
68-point order of face-alignment (0-16 jaw, 17-26 brows, 27-35 nose, 36-47 eyes, 48-59 outer lips,
60-67 inner lips), NaN on frames drawn without a face. Emotions: angry contempt disgusted fear happy neutral
sad surprised; levels 1-3 (neutral: level_1 only). ``{k}`` in HDTF names is the video index of the speaker.

What is in a clip:
- Face: a procedural cartoon portrait. Identity = face shape, skin / hair / eye / background colours, eye
  spacing, hair style, plus mannerisms (head-bob amplitude and rate, blink rhythm, expressiveness). Each
  emotion is a distinct expression (brows, eyes, mouth corners, lips, cheeks) whose size grows with the level;
  the mouth opens frame by frame with the RMS of the audio under that frame (real, measurable lip sync).
  Per clip: small head-pose offset/drift, gaze, lighting and expression noise.
- Voice: syllables of a sawtooth voice through vowel formant resonators, consonant bursts and pauses. Pitch, pitch
  range, tempo, loudness, tremor and brightness depend on the speaker and the emotion (angry: loud, fast,
  high, bright; sad: quiet, slow, low, flat; ...), with per-clip variation, so audio carries emotion but
  overlaps more than the face does.
- HDTF speakers (fictional names) talk with a mild mood shared by all clips of one video.
- Deterministic: the same settings give byte-identical files whatever the number of workers, and each clip's
  randomness depends only on (seed, identity, emotion, level, index), so a subset reproduces the same clips.

Options (defaults in brackets):
  --out DIR               output folder (created; existing files with the same names are replaced)
  --seed S                [0] changes every identity and clip
  --mead-identities N     [6] MEAD actors, 0-48, taken in the order M003 W009 M005 W011 M007 W014 M030 W015
                          W029, then the other released ids. The default 6 therefore hold 2 of the default test
                          ids (M003, W009) and 4 others (train + val); 0 = no MEAD.
  --hdtf-speakers N       [4] HDTF speakers, 0-120 (0 = no HDTF)
  --clips-per-level N     [2] MEAD clips per (identity, emotion, level)
  --hdtf-videos N         [1] videos per HDTF speaker
  --hdtf-clips N          [3] clips per HDTF video
  --seconds X             [2.0] clip duration
  --size PX               [128] frame width = height (even, >= 32)
  --emotions LIST         [all 8] comma-separated subset
  --levels LIST           [1,2,3] comma-separated subset (neutral is only generated when 1 is included)
  --workers N             [2, at most the CPU count] parallel processes (the output does not depend on it)

Default set: 6 MEAD identities x 22 (emotion, level) folders x 2 clips = 264 clips of 2 s (60 frames, 128 px)
with their m4a files, plus 4 HDTF speakers x 3 clips = 12 clips of 2 s (50 frames): 552 s of video, about
20 MB. It takes about 17 s of CPU time (most of it H.264 / AAC encoding); measured wall time: 38-44 s on 2 cores
shared with other jobs (load average 5-7).

The Python API (``generate``, ``draw_clip``, ``write_mead_clip`` / ``write_hdtf_clip``) also serves tests that
need crafted inputs: ``draw_clip(..., n_frames=3)`` makes a too-short clip, ``face_visible`` hides the face.
"""

from data_prep.synthetic.dataset import (
    HDTF_FPS,
    MEAD_FPS,
    MEAD_IDS,
    Clip,
    Identity,
    Summary,
    SyntheticConfig,
    draw_clip,
    emotion_prosody,
    generate,
    hdtf_identity,
    hdtf_speaker,
    hdtf_stem,
    landmarks_path,
    mead_audio_path,
    mead_identity,
    mead_video_path,
    mouth_from_audio,
    n_frames_for,
    write_hdtf_clip,
    write_mead_clip,
)
from data_prep.synthetic.face import EMOTION_EXPRESSIONS, LEVEL_SCALE, Expression, emotion_expression
from data_prep.synthetic.speech import EMOTION_PROSODY, Prosody, frame_rms

__all__ = [
    "EMOTION_EXPRESSIONS", "EMOTION_PROSODY", "HDTF_FPS", "LEVEL_SCALE", "MEAD_FPS", "MEAD_IDS", "Clip",
    "Expression", "Identity", "Prosody", "Summary", "SyntheticConfig", "draw_clip", "emotion_expression",
    "emotion_prosody", "frame_rms", "generate", "hdtf_identity", "hdtf_speaker", "hdtf_stem", "landmarks_path",
    "mead_audio_path", "mead_identity", "mead_video_path", "mouth_from_audio", "n_frames_for", "write_hdtf_clip",
    "write_mead_clip",
]
