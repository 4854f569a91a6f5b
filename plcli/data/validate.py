"""Validation of manifests: every problem reported with ``file:line`` and a reason.

The same function guards every training stage, so a stage never trains on rows that
``plcli validate`` would reject. With ``skip_invalid`` the bad rows are written, each with its
reasons, to a rejects file and the counts of accepted + rejected rows add up to the input.
"""

from __future__ import annotations

import statistics
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf

from plcli.data.labels import LabelNormalizer, Vocabulary
from plcli.data.manifest import Problem, Row, read_manifest
from plcli.errors import DataError, UserError
from plcli.io import atomic_write_jsonl

SILENCE_PEAK = 1e-4  # peak amplitude below which a clip counts as silent (a warning, not an error)


@dataclass
class ValidationReport:
    """Accepted rows, every problem found, and summary statistics."""

    rows: list[Row]
    problems: list[Problem]
    n_input: int
    n_rejected: int
    warnings: list[str] = field(default_factory=list)
    durations: dict[str, float] = field(default_factory=dict)  # row id -> seconds

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self, normalizer: LabelNormalizer | None = None) -> dict:
        tiers = Counter(r.tier for r in self.rows)
        sizes = Counter(len(r.candidates) for r in self.rows if r.candidates)
        durs = [self.durations[r.id] for r in self.rows if r.id in self.durations]
        vocab = Vocabulary.from_rows(self.rows, normalizer)
        return {
            "input_rows": self.n_input,
            "accepted": len(self.rows),
            "rejected": self.n_rejected,
            "problems": len(self.problems),
            "exact": tiers.get("exact", 0),
            "candidate_only": tiers.get("candidates", 0),
            "unlabelled": tiers.get("unlabelled", 0),
            "candidate_set_sizes": dict(sorted(sizes.items())),
            "duration_seconds": {
                "min": min(durs), "median": statistics.median(durs), "mean": statistics.fmean(durs),
                "max": max(durs), "total": sum(durs),
            } if durs else {},
            "vocabulary_size": len(vocab),
            "speakers": len({r.speaker for r in self.rows if r.speaker is not None}),
            "warnings": len(self.warnings),
        }


def check_audio_file(path: Path) -> tuple[float | None, str | None, str | None]:
    """(duration in seconds, problem, warning) for one audio file."""
    try:
        info = sf.info(str(path))
    except FileNotFoundError:
        return None, f"audio file not found: {path}", None
    except (sf.LibsndfileError, RuntimeError, OSError) as e:
        if not path.exists():
            return None, f"audio file not found: {path}", None
        if path.is_dir():
            return None, f"audio path is a folder: {path}", None
        if path.stat().st_size == 0:
            return None, f"audio file is empty (0 bytes): {path.name}", None
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        msg = msg.replace("Error opening ", "").replace(f"{str(path)!r}: ", "")  # the path is named once
        return None, f"unreadable audio {path.name}: {msg}", None
    if info.frames <= 0:
        if info.format not in ("WAV", "WAVEX", "AIFF"):  # libsndfile decodes a cut-off OGG stream to nothing
            return 0.0, f"audio decodes to 0 samples (empty, truncated or corrupt): {path.name}", None
        return 0.0, f"audio is empty (0 samples): {path.name}", None
    peak = 0.0
    try:
        # blocks keep memory flat on long files
        for block in sf.blocks(str(path), blocksize=1 << 18, dtype="float32", always_2d=True):
            if not np.isfinite(block).all():
                return info.frames / info.samplerate, f"audio contains NaN or Inf samples: {path.name}", None
            if block.size:
                peak = max(peak, float(np.abs(block).max()))
    except (sf.LibsndfileError, RuntimeError, OSError) as e:
        return None, f"unreadable audio {path.name} (truncated or corrupt: {e})", None
    warning = f"audio is silent (peak {peak:.1e}): {path.name}" if peak < SILENCE_PEAK else None
    if info.format in ("WAV", "WAVEX"):
        declared = _wav_declared_frames(path)
        if declared is not None and declared > info.frames:
            # libsndfile reads a cut-off WAV up to where it ends; say so rather than train on it silently
            warning = (f"audio is truncated: header declares {declared / info.samplerate:.2f} s, file holds "
                       f"{info.frames / info.samplerate:.2f} s (only that part is used): {path.name}")
    return info.frames / info.samplerate, None, warning


def _wav_declared_frames(path: Path) -> int | None:
    """Frames a RIFF/WAVE header promises in its ``data`` chunk; None when unknown (streamed, not RIFF)."""
    import struct

    try:
        with open(path, "rb") as f:
            head = f.read(12)
            if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
                return None
            block_align = 0
            while True:
                chunk = f.read(8)
                if len(chunk) < 8:
                    return None
                cid, size = chunk[:4], struct.unpack("<I", chunk[4:])[0]
                if cid == b"fmt ":
                    fmt = f.read(size + (size & 1))
                    block_align = struct.unpack_from("<H", fmt, 12)[0] if len(fmt) >= 14 else 0
                elif cid == b"data":
                    if block_align <= 0 or size in (0, 0xFFFFFFFF):
                        return None
                    return size // block_align
                else:
                    f.seek(size + (size & 1), 1)
    except OSError:
        return None


def validate_manifests(paths: list[str | Path], normalizer: LabelNormalizer | None = None,
                       check_audio: bool = True, threads: int = 4) -> ValidationReport:
    """Read and check every row of every manifest; nothing stops at the first problem."""
    if not paths:
        raise UserError("no manifest given")
    normalizer = normalizer or LabelNormalizer()
    problems: list[Problem] = []
    candidates: list[Row] = []
    n_input = 0
    for p in paths:
        rows, probs, n = read_manifest(p)
        problems.extend(probs)
        candidates.extend(rows)
        n_input += n
    bad: dict[int, list[str]] = {}  # index into candidates -> reasons

    seen: dict[str, Row] = {}
    for i, r in enumerate(candidates):
        if r.id in seen:
            first = seen[r.id]
            bad.setdefault(i, []).append(f"duplicate id {r.id!r} (first at {first.where})")
        else:
            seen[r.id] = r
        keys = [normalizer(c) for c in r.candidates]
        if any(not k for k in keys):
            bad.setdefault(i, []).append("empty candidate text")
        dup = sorted({c for c, k in zip(r.candidates, keys) if keys.count(k) > 1})
        if dup:
            bad.setdefault(i, []).append(f"duplicated candidate(s) {', '.join(map(repr, dup))}")
        if r.label is not None:
            lk = normalizer(r.label)
            if not lk:
                bad.setdefault(i, []).append("empty label")
            elif r.candidates and lk not in keys and not r.extra.get("none_of_these"):
                bad.setdefault(i, []).append(f"label {r.label!r} is not among the row's candidates")

    durations: dict[str, float] = {}
    warnings: list[str] = []
    if check_audio:
        with ThreadPoolExecutor(max(1, threads)) as ex:
            results = list(ex.map(check_audio_file, [r.audio for r in candidates]))
        for i, (r, (dur, prob, warn)) in enumerate(zip(candidates, results)):
            if prob:
                bad.setdefault(i, []).append(prob)
            elif dur is not None:
                durations[r.id] = dur
            if warn:
                warnings.append(f"{r.where}: {warn}")

    for i in sorted(bad):
        r = candidates[i]
        for reason in bad[i]:
            problems.append(Problem(r.file, r.line, reason, r.to_dict()))
    accepted = [r for i, r in enumerate(candidates) if i not in bad]
    problems.sort(key=lambda p: (p.file, p.line))
    n_rejected = len({(p.file, p.line) for p in problems if p.line > 0})
    return ValidationReport(accepted, problems, n_input, n_rejected, warnings, durations)


def write_rejects(report: ValidationReport, path: str | Path) -> None:
    """One JSON line per rejected input row: where it was, every reason, and the row itself."""
    grouped: dict[tuple[str, int], dict] = {}
    for p in report.problems:
        g = grouped.setdefault((p.file, p.line),
                               {"file": p.file, "line": p.line, "reasons": [], "row": p.raw})
        g["reasons"].append(p.reason)
    atomic_write_jsonl(path, list(grouped.values()))


def format_problems(problems: list[Problem], limit: int | None = None) -> str:
    shown = problems if limit is None else problems[:limit]
    lines = [str(p) for p in shown]
    if limit is not None and len(problems) > limit:
        lines.append(f"... and {len(problems) - limit} more")
    return "\n".join(lines)


def load_rows(paths: list[str | Path], normalizer: LabelNormalizer | None = None, skip_invalid: bool = False,
              rejects: str | Path | None = None, log=print) -> ValidationReport:
    """Validation as every stage runs it: stop with all problems listed, or skip and record them."""
    report = validate_manifests(paths, normalizer)
    fatal = [p for p in report.problems if p.line == 0]
    if fatal or (report.problems and not skip_invalid):
        hint = (
            ""
            if fatal
            else "\n(use --skip-invalid to go on with the valid rows; rejected rows go to a rejects file)"
        )
        raise DataError(f"{len(report.problems)} problem(s) in the input:\n"
                        f"{format_problems(report.problems, 50)}{hint}")
    if report.problems:
        if rejects is None:
            raise UserError("--skip-invalid needs a rejects file")
        write_rejects(report, rejects)
        log(f"skipped {report.n_rejected} invalid row(s) of {report.n_input}; reasons in {rejects}")
    if not report.rows:
        raise DataError("no valid rows in the input")
    for w in report.warnings[:5]:
        log(f"warning: {w}")
    if len(report.warnings) > 5:
        log(f"... and {len(report.warnings) - 5} more warnings (plcli validate lists them all)")
    return report
