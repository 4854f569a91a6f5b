"""The labelling page's HTTP server (standard library ``ThreadingHTTPServer``).

Routes: ``GET /`` the page, ``GET /api/state``, ``GET /audio/<id>`` a row's recording, and ``POST
/api/answer`` (``{"id", "label"}`` or ``{"id", "none_of_these": true}``), ``/api/skip`` (``{"id"}``),
``/api/undo``. Every API answer is the session's state as JSON; a refused request gets ``{"error":
message}`` and nothing is written. POSTs must be ``application/json``: a browser then sends no
cross-site request to the server without asking it first, so other web pages cannot label.
"""

from __future__ import annotations

import errno
import json
import re
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from urllib.parse import unquote, urlsplit

from plcli.errors import UserError
from plcli.label.session import AnswerError, LabelSession

AUDIO_TYPES = {".wav": "audio/wav", ".ogg": "audio/ogg", ".oga": "audio/ogg", ".opus": "audio/ogg",
               ".mp3": "audio/mpeg", ".flac": "audio/flac", ".m4a": "audio/mp4", ".aac": "audio/aac",
               ".webm": "audio/webm"}
DEFAULT_PORT = 8765
MAX_BODY = 1 << 16


def page() -> bytes:
    return resources.files("plcli.label").joinpath("page.html").read_bytes()


class Handler(BaseHTTPRequestHandler):
    session: LabelSession  # set on the subclass make_server builds
    log_fn = staticmethod(print)

    def log_message(self, format, *args):  # noqa: A002 - the base class's name
        pass  # the session logs every answer; per-request lines would drown them

    def _send(self, status: int, body: bytes, ctype: str, extra: dict | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, obj: dict, status: int = 200) -> None:
        self._send(status, json.dumps(obj, ensure_ascii=False).encode(), "application/json; charset=utf-8")

    def _error(self, status: int, msg: str) -> None:
        self._json({"error": msg}, status)

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        path = urlsplit(self.path).path
        try:
            if path in ("/", "/index.html"):
                self._send(200, page(), "text/html; charset=utf-8")
            elif path == "/api/state":
                self._json(self.session.state())
            elif path.startswith("/audio/"):
                self._audio(unquote(path[len("/audio/"):]))
            else:
                self._error(404, f"no such page: {path}")
        except AnswerError as e:
            self._error(e.status, str(e))
        except (BrokenPipeError, ConnectionResetError):
            pass  # the browser stopped loading (a new recording started); nothing to answer
        except OSError as e:
            self._error(404, f"cannot read the recording: {e.strerror or e}; skip it (s)")

    do_HEAD = do_GET  # noqa: N815

    def _audio(self, rid: str) -> None:
        path = self.session.audio_path(rid)
        ctype = AUDIO_TYPES.get(path.suffix.lower(), "application/octet-stream")
        data = path.read_bytes()
        start, end = _byte_range(self.headers.get("Range"), len(data))
        if start is None:
            self._send(200, data, ctype, {"Accept-Ranges": "bytes"})
        elif start >= len(data) or start > end:
            self._send(416, b"", ctype, {"Content-Range": f"bytes */{len(data)}"})
        else:
            self._send(206, data[start : end + 1], ctype,
                       {"Accept-Ranges": "bytes", "Content-Range": f"bytes {start}-{end}/{len(data)}"})

    def do_POST(self) -> None:  # noqa: N802
        path = urlsplit(self.path).path
        actions = {"/api/answer": self._answer, "/api/skip": lambda b: self.session.skip(b.get("id")),
                   "/api/undo": lambda b: self.session.undo()}
        if path not in actions:
            return self._error(404, f"no such action: {path}")
        if self.headers.get_content_type() != "application/json":
            return self._error(415, "send the request as application/json")
        try:
            n = int(self.headers.get("Content-Length") or 0)
            if n > MAX_BODY:
                return self._error(413, "request too large")
            body = json.loads(self.rfile.read(n) or b"{}")
            if not isinstance(body, dict):
                raise ValueError("expected a JSON object")
            self._json(actions[path](body))
        except (ValueError, UnicodeDecodeError) as e:
            self._error(400, f"bad request: {e}")
        except AnswerError as e:
            self._error(e.status, str(e))
        except OSError as e:
            self.log_fn(f"error: cannot write the labels file: {e}")
            self._error(500, f"cannot write the labels file: {e}; nothing was recorded")

    def _answer(self, body: dict) -> dict:
        unknown = set(body) - {"id", "label", "none_of_these"}
        if unknown:
            raise AnswerError(f"unknown field(s): {', '.join(sorted(unknown))}")
        return self.session.answer(body.get("id"), body.get("label"), bool(body.get("none_of_these")))


def _byte_range(header: str | None, size: int) -> tuple[int | None, int]:
    """(first, last) byte of a single ``Range: bytes=a-b`` header; (None, size - 1) for the whole file."""
    m = re.fullmatch(r"bytes=(\d*)-(\d*)", (header or "").strip())
    if not m or m.group(1) == m.group(2) == "":
        return None, size - 1
    first, last = m.group(1), m.group(2)
    if first == "":
        return max(0, size - int(last)), size - 1
    return int(first), min(int(last), size - 1) if last else size - 1


def make_server(session: LabelSession, host: str = "127.0.0.1", port: int | None = None,
                log=print) -> ThreadingHTTPServer:
    """A server bound to ``host:port``; ``port`` None: 8765, else any free port."""
    handler = type("LabelHandler", (Handler,), {"session": session, "log_fn": staticmethod(log)})
    for p in ([DEFAULT_PORT, 0] if port is None else [port]):
        try:
            server = ThreadingHTTPServer((host, p), handler)
            server.daemon_threads = True
            return server
        except OSError as e:
            if port is None and e.errno == errno.EADDRINUSE:
                continue
            raise UserError(f"cannot listen on {host}:{p}: {e.strerror or e}"
                            + ("; give another --port" if e.errno == errno.EADDRINUSE else "")) from None
    raise AssertionError("unreachable")
