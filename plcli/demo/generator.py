"""``plcli demo-data``: a synthetic but realistic version of the voice-message problem.

A group chat is simulated: authors type short everyday phrases with Zipf-like popularity, and a
share of what they say is first sent as a voice message. The text follows after a random typing
delay while other people keep writing, so a voice message's candidates (the first ``k`` distinct
texts after it) hold its transcript at a random, delay-dependent position. Voice messages sent
after the chat's last text have no candidates at all. A few training rows carry an exact label.

The authors are synthetic speakers (``plcli.demo.synth``: espeak-ng from pip, more engines when
installed) who write and speak one language (``--language``: en, de, es or ru; the phrases are
in ``plcli.demo.phrases``), and every recording gets a random recording condition
(``plcli.demo.degrade``). The test set is a second chat whose speakers, and voices, never occur in
training.

Output folder::

    train.jsonl      id, audio, candidates, label (exact rows only), speaker, timestamp, degradation
    test.jsonl       the same for unseen speakers; every row has its label
    truth.jsonl      {"id", "label"} of every training row, for evaluation only
    audio/*.wav      16-bit PCM mono
    chat/            the training chat as an export: voices.csv, messages.csv, labels.csv
    meta.json        configuration, language, engines, speakers, phrases and counts
    README.txt       this layout in words

A recording is a pure function of (seed, split, index): the same seed gives byte-identical files
whatever the number of workers.
"""

from __future__ import annotations

import bisect
import csv
import io
import json
import math
import os
import shutil
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np

from plcli.config import Config, opt
from plcli.data.chat import first_distinct
from plcli.data.labels import LabelNormalizer
from plcli.demo.phrases import LANGUAGE_PHRASES
from plcli.errors import UserError
from plcli.io import atomic_open, atomic_write_json, atomic_write_jsonl, atomic_write_text

PHRASES = LANGUAGE_PHRASES["en"]  # the default language's

CHAT_START = datetime(2024, 3, 4, 8, 0, 0, tzinfo=timezone.utc)
TRAIN, TEST = 0, 1
SPLIT_NAMES = ("train", "test")
ID_PREFIX = ("v", "t")
BABBLE_BANK = 48  # most babble utterances per split; each worker synthesises them once, on first use


@dataclass
class DemoConfig(Config):
    """Options of ``plcli demo-data``."""

    phrases: int = opt(
        50,
        "vocabulary size: the first N built-in phrases, or N template messages with --vocabulary long-tail",
        min=2,
    )
    vocabulary: str = opt(
        "phrases",
        "'phrases': built-in everyday phrases (at most 60); 'long-tail': template messages (at most 653)",
        why="long-tail messages share words (times, places, names, numbers); English only, for "
        "open-vocabulary work",
        choices=("phrases", "long-tail"),
    )
    language: str = opt(
        "en",
        "language of the phrases and the voices (ISO 639-1)",
        why="espeak-ng's voices of it, and MBROLA's where installed; the English-only engines speak only en",
        choices=tuple(LANGUAGE_PHRASES),
    )
    train: int = opt(4000, "training voice messages", min=1)
    test: int = opt(1000, "test voice messages (a second chat with unseen speakers)", min=0)
    exact_fraction: float = opt(0.05, "share of training rows that get an exact label", min=0.0, max=1.0)
    unlabelled_fraction: float = opt(
        0.02, "share of training voice messages sent after the last text (no candidates)", min=0.0, max=0.5
    )
    candidates: int = opt(10, "candidates per voice message: the next K distinct chat texts", min=1)
    voice_share: float = opt(
        0.3, "share of chat texts that were first sent as a voice message", min=0.01, max=1.0
    )
    message_gap: float = opt(20.0, "mean seconds between two chat texts", min=3.0)
    typing_delay: float = opt(60.0, "mean seconds from recording a voice message to typing its text", min=1.0)
    variant_fraction: float = opt(
        0.1,
        "share of texts typed with other casing or end punctuation ('see you tomorrow!!')",
        min=0.0,
        max=1.0,
    )
    zipf: float = opt(1.0, "Zipf exponent of phrase popularity (0: uniform)", min=0.0)
    missing_truth: float = opt(
        0.0, "share of voice messages nobody typed: their candidates miss their message (train and test)",
        min=0.0, max=0.9,
    )
    new_messages: float = opt(
        0.0,
        "share of the messages only the test chat uses: never heard (nor typed) in training",
        why="for open-vocabulary evaluation",
        min=0.0,
        max=0.5,
    )
    train_speakers: int = opt(24, "speakers (chat authors) in the training chat", min=1)
    test_speakers: int = opt(8, "speakers in the test chat, disjoint from training", min=1)
    holdout_voices: float = opt(
        0.25, "share of each engine's voices kept for test speakers only", min=0.0, max=0.9
    )
    engines: str = opt(
        "auto", "TTS engines: 'auto' (all installed) or a comma list of espeak, flite, festival, pico, mbrola"
    )
    degradation: str = opt(
        "clean=0.2,medium=0.5,hard=0.3", "mix of recording conditions (levels clean, medium, hard)"
    )
    sample_rate: int = opt(16000, "output sample rate in Hz", min=8000)
    seed: int = opt(0, "random seed: the same seed gives the same files", min=0)
    workers: int = opt(0, "worker processes (0: all cores)", min=0)

    def check(self) -> None:
        from plcli.demo.degrade import parse_mix
        from plcli.demo.longtail import all_messages

        if self.vocabulary == "long-tail" and self.language != "en":
            raise UserError(f"the long-tail vocabulary is English: it has no {self.language} messages")
        most = len(LANGUAGE_PHRASES[self.language]) if self.vocabulary == "phrases" else len(all_messages())
        if self.phrases > most:
            raise UserError(f"phrases={self.phrases}: the {self.vocabulary} vocabulary has {most} messages")
        if self.phrases <= self.candidates:
            raise UserError(f"phrases={self.phrases} must exceed candidates={self.candidates}")
        try:
            parse_mix(self.degradation)
        except ValueError as e:
            raise UserError(str(e)) from None


# ---------------------------------------------------------------------------------------------
# Chat simulation
# ---------------------------------------------------------------------------------------------


@dataclass
class VoiceMessage:
    time: int  # seconds since CHAT_START
    author: str
    phrase: int
    candidates: list[str]
    label: str  # the candidate that is the transcript, as typed; the phrase itself without candidates
    position: int = -1  # index of the label among the candidates; -1: not among them (or none)

    @property
    def holds_truth(self) -> bool:
        return self.position >= 0


def zipf_popularity(n: int, exponent: float, rng: np.random.Generator) -> np.ndarray:
    """Probabilities ~ 1/rank**exponent, ranks assigned to the phrases in random order."""
    p = 1.0 / np.arange(1, n + 1, dtype=np.float64) ** exponent
    out = np.empty(n)
    out[rng.permutation(n)] = p / p.sum()
    return out


def typed_variant(text: str, rng: np.random.Generator) -> str:
    """How someone might type ``text``: other casing or end punctuation, same normalised label (in
    any language: Spanish's opening "¿" and "¡" stay, and the normaliser strips them as it does the end)."""
    core = text.rstrip(".!?")
    end = text[len(core) :]
    kind = int(rng.integers(5))
    if kind == 0:
        return core.lower()
    if kind == 1:
        return core
    if kind == 2:
        return text.lower()
    if kind == 3:
        return core + ("??" if end == "?" else "!!")
    return core + ("..." if end != "?" else "?!")


def _candidates(
    times: list[int], keys: list[str], texts: list[str], t: int, k: int
) -> tuple[list[str], list[str]]:
    """First ``k`` distinct texts strictly after ``t`` (distinct by key), and their keys."""
    pos = first_distinct(keys, range(bisect.bisect_right(times, t), len(times)), k)
    return [texts[j] for j in pos], [keys[j] for j in pos]


def simulate_chat(
    n_voice: int,
    n_unlabelled: int,
    authors: list[str],
    phrases: list[str],
    popularity: np.ndarray,
    cfg: DemoConfig,
    rng: np.random.Generator,
) -> tuple[list[tuple[int, str, str]], list[VoiceMessage]]:
    """Chat texts ``(time, text, author)`` and voice messages, both in time order.

    Texts arrive at random intervals (at least 2 s apart, so a voice message one second before its
    text never shares a timestamp with another text). A random share of texts was first recorded
    as a voice message ``d`` seconds earlier; ``d`` is redrawn until the text is among the voice
    message's first ``k`` distinct following texts, so the true position depends on ``d`` and
    on how busy the chat was. ``n_unlabelled`` more voice messages follow the last text. A share
    ``cfg.missing_truth`` of the others was never typed: its candidates do not hold its message.
    """
    key = LabelNormalizer()
    k = cfg.candidates
    n_missing = int(round(cfg.missing_truth * (n_voice - n_unlabelled)))
    n_lab = n_voice - n_unlabelled - n_missing
    tail = 4 * k  # texts after the last voice message's text, so its candidate list is full
    n_msg = max(n_lab, int(math.ceil(n_lab / cfg.voice_share))) + tail
    gaps = 2 + np.round(rng.exponential(cfg.message_gap - 2, n_msg)).astype(np.int64)
    times = [int(t) for t in 3600 + np.cumsum(gaps)]  # an hour in, so early recordings fall inside the chat
    activity = rng.gamma(2.0, size=len(authors))
    who = rng.choice(len(authors), size=n_msg, p=activity / activity.sum())
    said = rng.choice(len(phrases), size=n_msg, p=popularity)
    texts = [
        typed_variant(phrases[s], rng) if rng.random() < cfg.variant_fraction else phrases[s] for s in said
    ]
    keys = [key(t) for t in texts]
    taken = set(times)
    messages = [(times[i], texts[i], authors[who[i]]) for i in range(n_msg)]

    voices: list[VoiceMessage] = []
    for m in sorted(rng.choice(n_msg - tail, size=n_lab, replace=False).tolist()):
        for attempt in range(100):
            d = 1 if attempt == 99 else max(1, int(round(rng.gamma(1.5, cfg.typing_delay / 1.5))))
            t = times[m] - d
            if t in taken:
                continue
            cands, ckeys = _candidates(times, keys, texts, t, k)
            if keys[m] in ckeys:
                pos = ckeys.index(keys[m])
                voices.append(VoiceMessage(t, authors[who[m]], int(said[m]), cands, cands[pos], pos))
                break
        else:  # unreachable: with d = 1 the text is the first one after t
            raise AssertionError("no delay puts the text among the candidates")
    voices += _untyped(n_missing, times, keys, texts, authors, phrases, popularity, k, taken, tail, rng)
    voices += _after_last_text(n_unlabelled, times[-1], authors, phrases, popularity, rng)
    voices.sort(key=lambda v: v.time)
    return messages, voices


def _after_last_text(n: int, last: int, authors, phrases, popularity,
                     rng: np.random.Generator) -> list[VoiceMessage]:
    """``n`` voice messages 1 min to 1 h after the last text (at ``last``): no candidates, so unlabelled."""
    out: list[VoiceMessage] = []
    extra = np.sort(rng.uniform(60, 3600, size=n)).round().astype(np.int64)
    for dt in extra:
        s = int(rng.choice(len(phrases), p=popularity))
        out.append(VoiceMessage(last + int(dt), authors[int(rng.integers(len(authors)))], s, [], phrases[s]))
    return out


def _untyped(n: int, times, keys, texts, authors, phrases, popularity, k: int, taken: set, tail: int,
             rng: np.random.Generator) -> list[VoiceMessage]:
    """``n`` voice messages nobody typed: at random times in the chat, a phrase the next ``k``
    distinct texts do not hold."""
    key = LabelNormalizer()
    out: list[VoiceMessage] = []
    while len(out) < n:
        t = int(rng.integers(times[0], times[-tail]))
        s = int(rng.choice(len(phrases), p=popularity))
        cands, ckeys = _candidates(times, keys, texts, t, k)
        if t in taken or key(phrases[s]) in ckeys:
            continue
        taken.add(t)
        out.append(VoiceMessage(t, authors[int(rng.integers(len(authors)))], s, cands, phrases[s]))
    return out


def iso(t: int) -> str:
    """Chat time (seconds since the chat's start) as naive ISO 8601, as chat exports write it."""
    return (CHAT_START + timedelta(seconds=int(t))).strftime("%Y-%m-%dT%H:%M:%S")


# ---------------------------------------------------------------------------------------------
# Rendering (runs in worker processes)
# ---------------------------------------------------------------------------------------------

_STATE: dict = {}


def _init_worker(state: dict) -> None:
    """Per-process setup: synthesizer (espeak-ng is loaded per utterance), degrader, speakers."""
    from plcli.demo.degrade import Degrader
    from plcli.demo.synth import Speaker, Synthesizer

    _STATE.clear()
    _STATE.update(state)
    _STATE["synth"] = Synthesizer(state["sample_rate"])
    _STATE["degrader"] = Degrader(state["degradation"], state["sample_rate"])
    _STATE["speakers"] = {d["id"]: Speaker(**d) for d in state["speaker_dicts"]}
    _STATE["bank"] = {}


def _babble_clip(split: int, j: int) -> np.ndarray:
    """Babble bank entry ``j`` of ``split``: one phrase by one speaker of that split, cached."""
    bank = _STATE["bank"]
    if (split, j) not in bank:
        rng = np.random.default_rng([_STATE["seed"], 3, split, j])
        pool = _STATE["split_speakers"][split]
        speaker = _STATE["speakers"][pool[int(rng.integers(len(pool)))]]
        text = _STATE["phrases"][int(rng.integers(len(_STATE["phrases"])))]
        bank[(split, j)] = _STATE["synth"].speak(text, speaker, rng)
    return bank[(split, j)]


def _babble(split: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """3-6 other people talking at once: looped bank phrases at random offsets and levels."""
    out = np.zeros(n, np.float32)
    bank = _STATE["bank_size"][split]
    for j in rng.choice(bank, size=min(bank, int(rng.integers(3, 7))), replace=False):
        clip = _babble_clip(split, int(j))
        gap = np.zeros(int(rng.uniform(0.1, 0.6) * _STATE["sample_rate"]), np.float32)
        loop = np.tile(np.concatenate([clip, gap]), n // (clip.size + gap.size) + 2)
        start = int(rng.integers(clip.size + gap.size))
        out += loop[start : start + n] * np.float32(10 ** (rng.uniform(-6, 0) / 20))
    return out


def _render(job: tuple) -> tuple[int, int, dict, float]:
    """Synthesise, degrade and write one recording; returns (split, index, degradation, seconds)."""
    from plcli.demo.synth import speakable

    split, index, path, text, speaker_id = job
    rng = np.random.default_rng([_STATE["seed"], 1 + split, index])
    speech = _STATE["synth"].speak(speakable(text), _STATE["speakers"][speaker_id], rng)
    audio, info = _STATE["degrader"](speech, rng, babble=lambda n, r: _babble(split, n, r))
    pcm = np.clip(np.round(audio * 32768.0), -32768, 32767).astype(np.int16)
    _write_wav(Path(path), pcm, _STATE["sample_rate"])
    return split, index, info, pcm.size / _STATE["sample_rate"]


def _write_wav(path: Path, pcm: np.ndarray, sample_rate: int) -> None:
    import soundfile as sf

    # through memory: soundfile fsyncs real files on close, which costs more than the synthesis
    buf = io.BytesIO()
    sf.write(buf, pcm, sample_rate, subtype="PCM_16", format="WAV")
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(buf.getvalue())
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------
# The generator
# ---------------------------------------------------------------------------------------------


def _default_workers() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _prepare_out(out: Path) -> None:
    """Refuse a non-empty folder unless an earlier demo-data run made it; clear that run's audio."""
    if out.exists() and not out.is_dir():
        raise UserError(f"{out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        meta = out / "meta.json"
        try:
            ours = json.loads(meta.read_text(encoding="utf-8")).get("generator") == "plcli demo-data"
        except (OSError, ValueError, AttributeError):
            ours = False
        if not ours:
            raise UserError(f"{out} is not empty and holds no earlier demo data: choose a new folder")
        shutil.rmtree(out / "audio", ignore_errors=True)
    try:
        (out / "audio").mkdir(parents=True, exist_ok=True)
        (out / "chat").mkdir(exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create {out}: {e.strerror}") from None


def _write_csv(path: Path, header: list[str], rows: list[list]) -> None:
    with atomic_open(path, "w") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(header)
        w.writerows(rows)


def generate_demo(
    out_dir: Path | str,
    cfg: DemoConfig,
    progress: Callable[[int, int], None] | None = None,
) -> dict:
    """Generate the demo dataset into ``out_dir`` (see the module docstring); returns a summary.

    ``progress(done, total)`` is called as recordings are written. Raises ``UserError`` for bad
    options, missing engines or an output folder that holds something else. With more than one
    worker the recordings are made in "spawn" processes: a script that calls this must guard its
    entry point with ``if __name__ == "__main__":``.
    """
    t0 = time.perf_counter()
    cfg.validate()
    out = Path(out_dir)
    engines, voices, train_spk, test_spk = _speakers(cfg)
    _prepare_out(out)
    # marks the folder as ours from the start, so a run that dies half-way can simply be repeated
    atomic_write_json(out / "meta.json", {"generator": "plcli demo-data", "complete": False})

    phrases = vocabulary(cfg)
    popularity = zipf_popularity(len(phrases), cfg.zipf, np.random.default_rng([cfg.seed, 5]))
    train_msgs, splits = _simulate(cfg, phrases, popularity, train_spk, test_spk)
    ids = [[f"{ID_PREFIX[s]}{i:06d}" for i in range(len(v))] for s, v in enumerate(splits)]
    jobs = [
        (s, i, str(out / "audio" / f"{ids[s][i]}.wav"), phrases[v.phrase], v.author)
        for s, vs in enumerate(splits)
        for i, v in enumerate(vs)
    ]
    state = {
        "seed": cfg.seed,
        "sample_rate": cfg.sample_rate,
        "degradation": cfg.degradation,
        "phrases": phrases,
        "speaker_dicts": [s.to_dict() for s in train_spk + test_spk],
        "split_speakers": ([s.id for s in train_spk], [s.id for s in test_spk] or [s.id for s in train_spk]),
        # small sets need few babble voices: the bank costs a synthesis per entry and worker
        "bank_size": tuple(min(BABBLE_BANK, max(6, len(v) // 8)) for v in splits),
    }
    workers = min(cfg.workers or _default_workers(), max(1, len(jobs)))
    info, seconds = _render_all(jobs, state, splits, workers, progress)
    summary = _write_outputs(out, cfg, engines, voices, train_spk, test_spk, phrases, popularity,
                             train_msgs, splits, ids, info, seconds)  # fmt: skip
    summary["seconds"] = round(time.perf_counter() - t0, 1)
    summary["workers"] = workers
    return summary


def _speakers(cfg: DemoConfig) -> tuple[list[str], list, list, list]:
    """(engines, their voices, training speakers, test speakers); ``UserError`` when none fit."""
    from plcli.demo.synth import LANGUAGE_ACCENTS, engine_voices, make_speakers, resolve_engines

    try:
        engines = resolve_engines(cfg.engines, cfg.language)
    except ValueError as e:
        raise UserError(str(e)) from None
    if not engines:
        raise UserError("no TTS engine available: pip install espeakng-loader")
    voices = engine_voices(engines, cfg.language)
    try:
        train_spk, test_spk = make_speakers(
            voices, cfg.train_speakers, cfg.test_speakers, cfg.seed, cfg.holdout_voices,
            LANGUAGE_ACCENTS[cfg.language],
        )
    except ValueError as e:
        raise UserError(str(e)) from None
    return engines, voices, train_spk, test_spk


def vocabulary(cfg: DemoConfig) -> list[str]:
    """The messages of the simulated chat: built-in phrases or long-tail template messages."""
    if cfg.vocabulary == "long-tail":
        from plcli.demo.longtail import long_tail_messages

        return long_tail_messages(cfg.phrases, cfg.seed)
    return list(LANGUAGE_PHRASES[cfg.language][: cfg.phrases])


def new_message_indices(n: int, share: float, seed: int) -> list[int]:
    """The seeded ``share`` of ``n`` messages that only the test chat uses (``--new-messages``)."""
    k = int(round(share * n))
    return sorted(np.random.default_rng([seed, 6]).choice(n, size=k, replace=False).tolist()) if k else []


def _simulate(cfg: DemoConfig, phrases, popularity, train_spk, test_spk):
    """The training chat's texts and the (train, test) voice messages."""
    n_unlab = int(round(cfg.unlabelled_fraction * cfg.train))
    train_pop = popularity.copy()
    train_pop[new_message_indices(len(phrases), cfg.new_messages, cfg.seed)] = 0.0
    train_pop /= train_pop.sum()
    train_msgs, train_voices = simulate_chat(
        cfg.train, n_unlab, [s.id for s in train_spk], phrases, train_pop, cfg,
        np.random.default_rng([cfg.seed, 11])
    )
    test_voices: list[VoiceMessage] = []
    if cfg.test:
        _, test_voices = simulate_chat(
            cfg.test, 0, [s.id for s in test_spk], phrases, popularity, cfg,
            np.random.default_rng([cfg.seed, 12])
        )
    return train_msgs, (train_voices, test_voices)


def _render_all(jobs: list, state: dict, splits, workers: int, progress) -> tuple[list[list[dict]], float]:
    """Render every recording (in this process or a spawn pool); per-recording info and audio seconds."""
    info: list[list[dict]] = [[{}] * len(v) for v in splits]
    seconds = 0.0
    done = 0
    if progress:
        progress(0, len(jobs))

    def collect(result: tuple) -> None:
        nonlocal done, seconds
        s, i, d, dur = result
        info[s][i] = d
        seconds += dur
        done += 1
        if progress:
            progress(done, len(jobs))

    if workers == 1:
        _init_worker(state)
        try:
            for job in jobs:
                collect(_render(job))
        finally:
            _STATE["synth"].close()
            _STATE.clear()
        return info, seconds
    import multiprocessing as mp

    # spawn: the parent may hold threads (torch, rich) that fork would copy half-way
    ctx = mp.get_context("spawn")
    chunk = max(1, min(16, len(jobs) // (workers * 8)))
    pool = ctx.Pool(workers, initializer=_init_worker, initargs=(state,))
    try:
        for result in pool.imap_unordered(_render, jobs, chunksize=chunk):
            collect(result)
        pool.close()  # workers exit normally, so their atexit handlers remove their temp files
    except BaseException:
        pool.terminate()
        raise
    finally:
        pool.join()
    return info, seconds


def _write_outputs(out, cfg, engines, voices, train_spk, test_spk, phrases, popularity, train_msgs, splits,
                   ids, info, seconds) -> dict:  # fmt: skip
    train_voices, test_voices = splits
    labelled, exact = _write_manifests(out, cfg, splits, ids, info)
    n_exact = len(exact)
    _write_csv(out / "chat" / "voices.csv", ["id", "audio", "timestamp", "author"],
               [[ids[TRAIN][i], f"../audio/{ids[TRAIN][i]}.wav", iso(v.time),
                 v.author] for i, v in enumerate(train_voices)])  # fmt: skip
    _write_csv(
        out / "chat" / "messages.csv",
        ["timestamp", "text", "author"],
        [[iso(t), x, a] for t, x, a in train_msgs],
    )
    _write_csv(out / "chat" / "labels.csv", ["id", "label"],
               [[ids[TRAIN][i], train_voices[i].label] for i in sorted(exact)])  # fmt: skip

    positions = Counter(v.position for v in train_voices if v.candidates and v.holds_truth)
    levels = [Counter(d["level"] for d in info[s]) for s in (TRAIN, TEST)]
    counts = {
        "train": len(train_voices),
        "train_exact": n_exact,
        "train_candidates_only": len(labelled) - n_exact,
        "train_unlabelled": len(train_voices) - len(labelled),
        "train_missing_truth": sum(1 for v in train_voices if v.candidates and not v.holds_truth),
        "test_missing_truth": sum(1 for v in test_voices if v.candidates and not v.holds_truth),
        "test": len(test_voices),
        "chat_messages": len(train_msgs),
        "phrases": len(phrases),
        "train_speakers": len(train_spk),
        "test_speakers": len(test_spk),
        "audio_hours": round(seconds / 3600, 3),
    }
    config = {k: v for k, v in cfg.to_dict().items() if k != "workers"}  # workers do not change the data
    meta = {
        "generator": "plcli demo-data",
        "complete": True,
        "seed": cfg.seed,
        "language": cfg.language,
        "config": config,
        "counts": counts,
        "engines": engines,
        "voices": dict(Counter(e for e, _ in voices)),
        "speakers": {"train": [s.to_dict() for s in train_spk], "test": [s.to_dict() for s in test_spk]},
        "phrases": [
            {"text": p, "popularity": round(float(q), 5)} for p, q in zip(phrases, popularity, strict=True)
        ],
        "new_messages": [phrases[i] for i in new_message_indices(len(phrases), cfg.new_messages, cfg.seed)],
        "degradation": {SPLIT_NAMES[s]: dict(sorted(levels[s].items())) for s in (TRAIN, TEST)},
        "label_position": {str(k): positions[k] for k in sorted(positions)},
    }
    atomic_write_json(out / "meta.json", meta)
    atomic_write_text(out / "README.txt", _readme(cfg, counts, engines))
    return {"out": str(out), "language": cfg.language, **counts, "engines": engines}


def _write_manifests(out: Path, cfg: DemoConfig, splits, ids, info) -> tuple[list[int], set[int]]:
    """train.jsonl, test.jsonl and truth.jsonl; returns the training rows with candidates and the
    (seeded) ones among them that carry an exact label."""
    from plcli.demo.degrade import describe

    train_voices = splits[TRAIN]
    rng = np.random.default_rng([cfg.seed, 13])
    labelled = [i for i, v in enumerate(train_voices) if v.candidates]
    typed = [i for i in labelled if train_voices[i].holds_truth]  # an exact label comes from a typed text
    n_exact = min(len(typed), int(round(cfg.exact_fraction * len(train_voices))))
    exact = set(rng.choice(typed, size=n_exact, replace=False).tolist()) if n_exact else set()
    rows: tuple[list[dict], list[dict]] = ([], [])
    for s, vs in enumerate(splits):
        for i, v in enumerate(vs):
            row: dict = {"id": ids[s][i], "audio": f"audio/{ids[s][i]}.wav", "candidates": v.candidates}
            if s == TEST or i in exact:
                row["label"] = v.label
            if s == TEST and v.candidates and not v.holds_truth:
                row["none_of_these"] = True  # the label is not among the candidates: nobody typed it
            row.update(speaker=v.author, timestamp=iso(v.time), degradation=describe(info[s][i]))
            rows[s].append(row)
    atomic_write_jsonl(out / "train.jsonl", rows[TRAIN])
    atomic_write_jsonl(out / "test.jsonl", rows[TEST])
    atomic_write_jsonl(
        out / "truth.jsonl", [{"id": ids[TRAIN][i], "label": v.label} for i, v in enumerate(train_voices)]
    )
    return labelled, exact


def _readme(cfg: DemoConfig, counts: dict, engines: list[str]) -> str:
    return f"""Synthetic voice-message data made by `plcli demo-data` (seed {cfg.seed}).

A simulated group chat: {counts["train_speakers"]} synthetic speakers type {counts["phrases"]} short phrases
(Zipf-like popularity); some messages were first sent as voice messages. Speech engines: {", ".join(engines)}.

train.jsonl   {counts["train"]} voice messages. `candidates`: the next {cfg.candidates} distinct chat texts after
              the recording (its transcript is one of them); {counts["train_exact"]} rows also have an exact `label`;
              {counts["train_unlabelled"]} were sent after the last text and have no candidates;
              {counts["train_missing_truth"]} were never typed: their candidates miss their message.
test.jsonl    {counts["test"]} voice messages by {counts["test_speakers"]} speakers (and voices) not heard in training;
              every row has `label` and `candidates` ({counts["test_missing_truth"]} without the label among them).
truth.jsonl   the true label of every training row. For evaluation only: a model must not read it.
audio/        16-bit PCM WAV, {cfg.sample_rate} Hz mono, with recording conditions from clean to hard
              (noise, babble, reverb, telephone and low-bitrate codecs, clipping; see `degradation`).
chat/         the training chat as an export: voices.csv (id, audio, timestamp, author), messages.csv
              (timestamp, text, author), labels.csv (id, label). `plcli data from-chat` turns it back
              into train.jsonl's candidates.
meta.json     the configuration, speakers, phrases with their popularity, and counts.
"""  # noqa: E501 - the README's own lines
