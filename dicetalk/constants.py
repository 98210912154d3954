"""Constants shared by data preparation, training and evaluation."""

# MEAD emotion folder names, in the order used for class ids everywhere in the project.
EMOTIONS: tuple[str, ...] = ("angry", "contempt", "disgusted", "fear", "happy", "neutral", "sad", "surprised")
EMOTION_TO_ID: dict[str, int] = {name: i for i, name in enumerate(EMOTIONS)}
LEVELS: tuple[int, ...] = (1, 2, 3)

FPS = 25  # every clip in the store runs at 25 fps
SAMPLE_RATE = 16_000  # every waveform in the store is 16 kHz mono
SAMPLES_PER_FRAME = SAMPLE_RATE // FPS  # 640
WHISPER_HZ = 50  # whisper encoder positions per second
WHISPER_LAYERS = 5  # embedding output + 4 encoder layers of whisper-tiny
WHISPER_DIM = 384

# MEAD identities held out for testing by default (the paper holds out 5 of 46; DESIGN.md).
MEAD_TEST_IDS: tuple[str, ...] = ("M003", "M030", "W009", "W015", "W029")
HDTF_TEST_VIDEOS = 20
