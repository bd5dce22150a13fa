"""Running the emulator: in a background thread for tests, or in the foreground for the CLI.

Tests get a real socket (``run_emulator``), so the client under test goes through its whole HTTP
stack; the server binds loopback only because the credentials are fixed and public.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any

import uvicorn

from .app import create_app
from .credentials import Credentials
from .faults import expose_connection
from .runtime import Emulator
from .schema import SObject
from .settings import EmulatorSettings


def check_loopback(host: str) -> None:
    """Refuse any address that is not loopback: the emulator has fixed, public test credentials.

    Raises
    ------
    ValueError
        If ``host`` is not a loopback address (``localhost`` is accepted).
    """
    if host == "localhost":
        return
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ValueError(f"the emulator listens on loopback only, not on {host!r}")


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def _url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


class RunningEmulator:
    """A started emulator, as yielded by :func:`run_emulator`.

    Attributes
    ----------
    base_url
        ``http://127.0.0.1:PORT``: the ``instance_url`` and login host.
    credentials
        The org's logins (:class:`~.credentials.Credentials`).
    settings
        The live :class:`~.settings.EmulatorSettings`; change them with :meth:`update_settings`.
    emulator
        The underlying state, for white-box checks.
    """

    def __init__(self, emulator: Emulator) -> None:
        self.emulator = emulator
        self.base_url = emulator.base_url
        self.credentials = emulator.credentials
        self.settings = emulator.settings

    def update_settings(self, **changes: Any) -> None:
        """Change runtime settings, e.g. ``update_settings(error_503_rate=0.5)``."""
        self.emulator.update_settings(changes)

    def records(self, object_name: str, include_deleted: bool = False) -> list[dict[str, Any]]:
        """The stored records of ``object_name`` with typed values."""
        obj: SObject | None = self.emulator.schema.get(object_name)
        if obj is None:
            raise KeyError(object_name)
        return self.emulator.store.records(obj, include_deleted)

    def reset(self) -> None:
        """Forget every job and record and refill the limits (sessions stay valid)."""
        self.emulator.reset()

    def airflow_connection(self, **extra: object) -> str:
        """An ``AIRFLOW_CONN_...`` value for this emulator (see :meth:`Credentials.airflow_connection`)."""
        return self.credentials.airflow_connection(self.base_url, **extra)

    def new_access_token(self) -> str:
        """Issue a valid access token without going through a login."""
        return self.emulator.new_session()[0]


class _Server(uvicorn.Server):
    def install_signal_handlers(self) -> None:
        pass  # the test's thread owns the signals


@contextlib.contextmanager
def run_emulator(
    credentials: Credentials | None = None, log_level: str = "warning", **settings: Any
) -> Iterator[RunningEmulator]:
    """Start an emulator on a free loopback port in a background thread; stop it on exit.

    Parameters
    ----------
    credentials
        The org's logins; default: fixed test credentials with a per-process RSA key pair.
    log_level
        uvicorn's log level.
    **settings
        Any :class:`~.settings.EmulatorSettings` field, e.g. ``db=":memory:"``,
        ``records_per_second=None`` (instant), ``error_503_rate=0.2``, ``seed=1``.

    Yields
    ------
    RunningEmulator
        With ``base_url``, ``credentials``, ``settings`` and controls.
    """
    config = EmulatorSettings(**settings)
    check_loopback(config.host)
    sock = _bind(config.host, config.port)
    port = sock.getsockname()[1]
    config.port = port
    emulator = Emulator(config, credentials, base_url=_url(config.host, port))
    emulator.start()
    server = _Server(
        uvicorn.Config(
            expose_connection(create_app(emulator)), log_level=log_level, access_log=False, lifespan="off"
        )
    )
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name="salesforce-emulator", daemon=True
    )
    thread.start()
    try:
        while not server.started:
            if not thread.is_alive():
                raise RuntimeError("the emulator did not start")
            thread.join(0.01)
        yield RunningEmulator(emulator)
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
        emulator.stop()


def serve_forever(
    settings: EmulatorSettings,
    credentials: Credentials | None = None,
    log_level: str = "info",
    on_start: Callable[[Emulator], None] | None = None,
) -> None:
    """Run an emulator in the foreground until interrupted (the console script's server)."""
    check_loopback(settings.host)
    sock = _bind(settings.host, settings.port)
    settings.port = sock.getsockname()[1]
    emulator = Emulator(settings, credentials, base_url=_url(settings.host, settings.port))
    emulator.start()
    if on_start is not None:
        on_start(emulator)
    try:
        uvicorn.Server(
            uvicorn.Config(
                expose_connection(create_app(emulator)),
                log_level=log_level,
                access_log=False,
                lifespan="off",
            )
        ).run(sockets=[sock])
    finally:
        sock.close()
        emulator.stop()
