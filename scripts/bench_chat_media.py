"""Voice notes straight from a WhatsApp zip, or extracted once? Measures both on generated Opus files.

    python scripts/bench_chat_media.py [--files 200] [--seconds 4] [--passes 3]

Writes N Opus voice notes (16 kHz mono, like WhatsApp's) into a deflated zip, then times
(a) decoding every note from the zip (read the member into memory, decode with soundfile) and
(b) extracting every note once with plcli's extractor, then decoding the files from disk, each over
several passes, since later stages read every clip more than once. Results go to stdout.
"""

from __future__ import annotations

import argparse
import io
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np
import soundfile as sf

from plcli.data.exports.base import ZipMedia


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=200)
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--passes", type=int, default=3)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        zpath = root / "export.zip"
        names = [f"PTT-20220707-WA{i:04d}.opus" for i in range(args.files)]
        n = int(16000 * args.seconds)
        with zipfile.ZipFile(zpath, "w", zipfile.ZIP_DEFLATED) as zf:
            for name in names:
                wave = (0.2 * np.sin(2 * np.pi * rng.uniform(150, 600) * np.arange(n) / 16000)
                        + rng.normal(0, 0.02, n)).astype(np.float32)
                buf = io.BytesIO()
                sf.write(buf, wave, 16000, format="OGG", subtype="OPUS")
                zf.writestr(name, buf.getvalue())
        print(f"{args.files} voice notes of {args.seconds:g} s, zip {zpath.stat().st_size / 1e6:.1f} MB")

        zip_passes = []
        with zipfile.ZipFile(zpath) as zf:
            for _ in range(args.passes):
                t = time.perf_counter()
                for name in names:
                    sf.read(io.BytesIO(zf.read(name)), dtype="float32")
                zip_passes.append(time.perf_counter() - t)

        t = time.perf_counter()
        with zipfile.ZipFile(zpath) as zf:
            media = ZipMedia(zf)
            for name in names:
                media.copy_to(name, root / "media" / name)
        extract = time.perf_counter() - t
        t = time.perf_counter()
        with zipfile.ZipFile(zpath) as zf:
            media = ZipMedia(zf)
            for name in names:
                media.copy_to(name, root / "media" / name)  # already there: size + CRC check only
        again = time.perf_counter() - t
        disk_passes = []
        for _ in range(args.passes):
            t = time.perf_counter()
            for name in names:
                sf.read(str(root / "media" / name), dtype="float32")
            disk_passes.append(time.perf_counter() - t)

    ms = 1000 / args.files
    print(f"(a) from the zip:   decode pass {np.mean(zip_passes):.2f} s ({np.mean(zip_passes) * ms:.2f} "
          f"ms/file)")
    print(f"(b) extract once:   {extract:.2f} s ({extract * ms:.2f} ms/file); rerun (already extracted) "
          f"{again:.2f} s")
    print(f"    from the files: decode pass {np.mean(disk_passes):.2f} s ({np.mean(disk_passes) * ms:.2f} "
          f"ms/file)")
    total_a = sum(zip_passes)
    total_b = extract + sum(disk_passes)
    print(f"{args.passes} passes: zip {total_a:.2f} s, extract + files {total_b:.2f} s")


if __name__ == "__main__":
    main()
