"""What the export readers share: the parsed chat and the media inside an export (zip or folder)."""

from __future__ import annotations

import filecmp
import os
import shutil
import tempfile
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from plcli.data.chat import Message
from plcli.data.manifest import Problem
from plcli.io import default_file_mode


@dataclass(slots=True)
class VoiceNote:
    """A voice note as the export names it: ``name`` is its media path inside the export."""

    name: str
    time: float  # unix seconds, naive local times read as UTC; ties broken by export order
    timestamp: str  # ISO 8601 as the export gives it (local time)
    author: str | None
    line: int


@dataclass
class ParsedChat:
    """One chat read from an export; ``file`` is the log (or result.json) that line numbers refer to."""

    format: str
    file: str
    chat: str | None
    voices: list[VoiceNote] = field(default_factory=list)
    messages: list[Message] = field(default_factory=list)
    skipped: list[Problem] = field(default_factory=list)  # voice notes that cannot be imported
    counts: dict[str, int] = field(default_factory=dict)  # system lines, other attachments, ...
    notes: list[str] = field(default_factory=list)  # decisions worth telling the user (date order)


def tie_break(times: list[float]) -> list[float]:
    """Make equal timestamps follow the export's order (logs have minute or second resolution).

    Adds less than half a second, growing with the position, so a text typed in the same minute
    after a voice note still counts as after it, and distinct seconds never swap.
    """
    n = len(times) + 1
    return [t + 0.5 * i / n for i, t in enumerate(times)]


class FolderMedia:
    """Media files of an unpacked export, relative to ``root``."""

    def __init__(self, root: Path):
        self.root = root

    def size(self, name: str) -> int | None:
        path = self.root / name
        return path.stat().st_size if path.is_file() else None

    def names(self, folder: str = "") -> list[str]:
        """Files directly in ``folder`` (relative to the export), as names relative to the export."""
        where = self.root / folder
        return sorted(f"{folder}{p.name}" for p in where.iterdir() if p.is_file()) if where.is_dir() else []

    def path(self, name: str) -> Path:
        return Path(os.path.abspath(self.root / name))

    def copy_to(self, name: str, dest: Path) -> bool:
        """Copy into ``dest``; False when an identical copy is already there."""
        src = self.root / name
        if dest.is_file() and filecmp.cmp(src, dest, shallow=False):
            return False
        def copy(f):
            with open(src, "rb") as source:
                shutil.copyfileobj(source, f, 1 << 20)

        _atomic_copy(copy, dest)
        return True


class ZipMedia:
    """Media files inside a zip, relative to the folder of the log within the zip."""

    def __init__(self, zf: zipfile.ZipFile, root: str = ""):
        self.zf, self.root = zf, root
        self.infos = {i.filename: i for i in zf.infolist() if not i.is_dir()}

    def size(self, name: str) -> int | None:
        info = self.infos.get(self.root + name)
        return None if info is None else info.file_size

    def names(self, folder: str = "") -> list[str]:
        """Files directly in ``folder`` (relative to the export), as names relative to the export."""
        prefix = self.root + folder
        return sorted(
            n[len(self.root) :] for n in self.infos if n.startswith(prefix) and "/" not in n[len(prefix) :]
        )

    def copy_to(self, name: str, dest: Path) -> bool:
        """Extract into ``dest``; False when a copy with the same size and CRC is already there."""
        info = self.infos[self.root + name]
        if dest.is_file() and dest.stat().st_size == info.file_size:
            if zlib.crc32(dest.read_bytes()) == info.CRC:
                return False

        def extract(f):
            with self.zf.open(info) as src:
                shutil.copyfileobj(src, f, 1 << 20)

        _atomic_copy(extract, dest)
        return True


def _atomic_copy(write, dest: Path) -> None:
    # no fsync: the copies can be made again from the export, and thousands of fsyncs are slow
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.chmod(tmp, default_file_mode())
        os.replace(tmp, dest)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise

