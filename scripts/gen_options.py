"""Write docs/options.md, every option of every command, from the config dataclasses.

    python scripts/gen_options.py           # rewrite docs/options.md
    python scripts/gen_options.py --check   # exit 1 if docs/options.md is out of date

tests/test_cli_options.py checks that the file is up to date.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from plcli.cli import app
from plcli.cli_options import options_markdown

DOC = Path(__file__).resolve().parents[1] / "docs" / "options.md"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="only check that docs/options.md is up to date")
    a = ap.parse_args()
    text = options_markdown(app)
    if a.check:
        if not DOC.is_file() or DOC.read_text(encoding="utf-8") != text:
            print(f"{DOC} is out of date: run python scripts/gen_options.py", file=sys.stderr)
            return 1
        return 0
    DOC.write_text(text, encoding="utf-8")
    print(f"wrote {DOC}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
