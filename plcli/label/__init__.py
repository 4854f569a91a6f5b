"""``plcli label``: exact labels for the recordings that matter, given in a local web page.

``session`` holds the rows and the asking order (``select``), ``store`` the append-only labels file,
``server`` the HTTP server and ``page.html`` the page. See docs/labelling.md.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

from plcli.config import Config, opt
from plcli.errors import UserError
from plcli.label.select import UNCERTAINTY


@dataclass
class LabelPageConfig(Config):
    """``plcli label`` options."""

    manifests: list[str] = opt(
        factory=list, help="manifests (JSONL or CSV) or a chat export whose recordings to label"
    )
    labels: str = opt("", "labels file (JSONL, append-only): created if missing, continued if present")
    model: str | None = opt(
        None, "finetune or distill run: ask first about the recordings it is least sure of"
    )
    host: str = opt("127.0.0.1", "address the page is served on")
    port: int | None = opt(None, "port (default: 8765, else a free one)", min=0, max=65535)
    browser: bool = opt(True, "open the page in a web browser (only where a display exists)")
    seed: int = opt(0, "seed of the random order without --model")
    uncertainty: str = opt(
        "least-confident",
        "with --model: least-confident (1 - top probability) or margin (1 - (top - second))",
        choices=UNCERTAINTY,
    )
    batch_size: int = opt(256, "inference batch size with --model", min=1)
    cache_dir: str | None = opt(None, "feature cache folder (default: $PLCLI_CACHE or ~/.cache/plcli)")

    def check(self) -> None:
        if not self.manifests:
            raise UserError("no manifest given")
        if not self.labels:
            raise UserError("--labels is required: the file the answers are written to")


def has_display() -> bool:
    """Whether a browser can open a window here."""
    return sys.platform in ("darwin", "win32") or bool(
        os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
    )


def run(cfg: LabelPageConfig, log=print) -> dict:
    """Serve the page until Ctrl-C; returns how many answers this session wrote."""
    from plcli.label.server import make_server
    from plcli.label.session import build_session
    from plcli.label.store import LabelStore

    with LabelStore(cfg.labels, warn=lambda m: log(f"warning: {m}")) as store:
        session = build_session(cfg, store, log)
        server = make_server(session, cfg.host, cfg.port, log)
        host, port = server.server_address[:2]
        url = f"http://{host}:{port}/"
        p = session.state()["progress"]
        log(
            f"{p['labelled']} of {p['rows']} recordings with candidates are labelled, {p['left']} to ask; "
            f"answers go to {cfg.labels}"
        )
        log(f"labelling page: {url} (Ctrl-C to stop)")
        if cfg.browser and has_display():
            import webbrowser

            webbrowser.open(url)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
        finally:
            server.server_close()
        n = len(session.undo_stack)
        log(f"stopped; {n} answer(s) this session, all saved in {cfg.labels}")
        return {"answers": n, "url": url}
