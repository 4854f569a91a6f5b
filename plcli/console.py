"""Shared rich consoles and the error boundary of every command."""

from __future__ import annotations

import functools
import os
import sys

import typer
from rich.console import Console

console = Console()
err_console = Console(stderr=True)


def log(msg: str) -> None:
    """Progress message on stderr (stdout stays clean for tables and machine output)."""
    err_console.print(msg, highlight=False)


def handle_errors(fn):
    """User errors: one line, exit 2. Internal errors: one line, exit 1 (PLCLI_DEBUG=1 shows the
    traceback)."""
    from plcli.errors import UserError

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except typer.Exit:
            raise
        except UserError as e:
            err_console.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
            raise typer.Exit(e.exit_code) from None
        except KeyboardInterrupt:
            err_console.print("[yellow]interrupted[/]")
            raise typer.Exit(130) from None
        except OSError as e:
            # environment faults (permissions, disk full) are the user's to fix
            if os.environ.get("PLCLI_DEBUG"):
                raise
            where = f" {e.filename}" if getattr(e, "filename", None) else ""
            err_console.print(f"[bold red]error:[/] {e.strerror or e}{where}", highlight=False,
                              soft_wrap=True)
            raise typer.Exit(2) from None
        except Exception as e:  # noqa: BLE001 - the boundary of the program
            if os.environ.get("PLCLI_DEBUG"):
                raise
            err_console.print(
                f"[bold red]internal error:[/] {type(e).__name__}: {e}\n"
                "This is a bug in plcli; rerun with PLCLI_DEBUG=1 for the traceback and report it.",
                highlight=False, soft_wrap=True,
            )
            print("", file=sys.stderr)
            raise typer.Exit(1) from None

    return wrapper
