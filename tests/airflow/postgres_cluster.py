"""A throwaway PostgreSQL cluster for tests: Debian's server binaries, a temporary data directory.

The cluster listens on a free loopback port with its unix socket in the same temporary directory,
trusts local logins as ``postgres`` and logs every statement, so a test can see what the server was
asked to run (a ``DECLARE ... CURSOR`` and ``FETCH FORWARD`` for a server-side cursor). PostgreSQL
refuses to run as root: as root the cluster runs as the ``postgres`` system user.
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

_SERVER_GLOB = "/usr/lib/postgresql/*/bin/postgres"
#: pg_ctl waits this long for the server to accept connections (the machine may be busy).
_START_SECONDS = 120


class PostgresUnavailable(Exception):
    """No PostgreSQL server can be started here; the message says why (a test skips with it)."""


@dataclasses.dataclass(frozen=True)
class PostgresCluster:
    """A running cluster: connect to ``host``:``port`` as ``user`` to the database ``dbname``."""

    host: str
    port: int
    user: str
    dbname: str
    socket_dir: Path
    log_path: Path

    def log(self) -> str:
        """The server's log so far (every statement, with ``log_statement=all``)."""
        return self.log_path.read_text(encoding="utf-8", errors="replace")


def server_bindir() -> Path:
    """The ``bin`` directory of the newest installed PostgreSQL server (Debian's layout, then PATH)."""
    found = sorted(glob.glob(_SERVER_GLOB), key=_major_version)
    if found:
        return Path(found[-1]).parent
    on_path = shutil.which("postgres")
    if on_path and shutil.which("initdb") and shutil.which("pg_ctl"):
        return Path(on_path).resolve().parent
    raise PostgresUnavailable(
        f"no PostgreSQL server binaries ({_SERVER_GLOB} or postgres/initdb/pg_ctl on PATH): "
        "install Debian's postgresql package (.ci/run does when apt is reachable)"
    )


def _major_version(path: str) -> int:
    version = Path(path).parent.parent.name
    return int(version) if version.isdigit() else 0


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _as_server_user() -> tuple[list[str], int | None, int | None]:
    """The command prefix and the uid/gid that own the cluster's files."""
    if os.geteuid() != 0:
        return [], None, None
    try:
        entry = pwd.getpwnam("postgres")
    except KeyError:
        raise PostgresUnavailable(
            "running as root and there is no 'postgres' system user to run the server as"
        ) from None
    runuser = shutil.which("runuser")
    if runuser is None:
        raise PostgresUnavailable("running as root and runuser is missing to start the server as 'postgres'")
    return [runuser, "-u", "postgres", "--"], entry.pw_uid, entry.pw_gid


def _run(command: list[str], what: str, timeout: float) -> None:
    try:
        done = subprocess.run(  # noqa: S603 - the server's own binaries, arguments built here
            command, capture_output=True, text=True, timeout=timeout, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise PostgresUnavailable(f"{what} did not run: {type(exc).__name__}: {exc}") from None
    if done.returncode != 0:
        raise PostgresUnavailable(
            f"{what} exited {done.returncode}: {(done.stderr or done.stdout).strip()[-2000:]}"
        )


@contextlib.contextmanager
def postgres_cluster(*settings: str) -> Iterator[PostgresCluster]:
    """Start a cluster in a new temporary directory; stop it and remove the directory on exit.

    ``settings`` are extra ``name=value`` server settings (``-c``).

    Raises
    ------
    PostgresUnavailable
        The binaries, the server user or the start failed; the message names what.
    """
    bindir = server_bindir()
    prefix, uid, gid = _as_server_user()
    # Not pytest's tmp_path: its parents are private to the user running the tests, and the server
    # may run as another one.
    root = Path(tempfile.mkdtemp(prefix="sf-bulk-pg-"))
    started = False
    data = root / "data"
    try:
        if uid is not None and gid is not None:
            os.chown(root, uid, gid)
        initdb = [str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust"]
        _run(
            [*prefix, *initdb, "-E", "UTF8", "--locale=C", "--no-sync"],
            "initdb",
            timeout=300,
        )
        options = [
            "listen_addresses=127.0.0.1",
            f"unix_socket_directories={root}",
            "fsync=off",
            "synchronous_commit=off",
            "full_page_writes=off",
            "log_statement=all",
            *settings,
        ]
        log_path = root / "server.log"
        error: PostgresUnavailable | None = None
        for _attempt in range(3):
            port = _free_port()  # another process may take it first: then try another
            server_options = " ".join([f"-p {port}", *(f"-c {option}" for option in options)])
            try:
                start = [str(bindir / "pg_ctl"), "start", "-D", str(data), "-l", str(log_path)]
                _run(
                    [*prefix, *start, "-w", "-t", str(_START_SECONDS), "-o", server_options],
                    "pg_ctl start",
                    timeout=_START_SECONDS + 30,
                )
            except PostgresUnavailable as exc:
                error = exc
                continue
            started = True
            break
        else:
            log = log_path.read_text(errors="replace")[-2000:] if log_path.exists() else ""
            raise PostgresUnavailable(f"{error}; server log: {log}")
        yield PostgresCluster("127.0.0.1", port, "postgres", "postgres", root, log_path)
    finally:
        if started:
            with contextlib.suppress(PostgresUnavailable):
                _run(
                    [*prefix, str(bindir / "pg_ctl"), "stop", "-D", str(data), "-m", "fast", "-w"],
                    "pg_ctl stop",
                    timeout=120,
                )
        shutil.rmtree(root, ignore_errors=True)
