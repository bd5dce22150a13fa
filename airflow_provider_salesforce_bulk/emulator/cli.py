"""``salesforce-bulk-emulator``: run a local Salesforce org for offline pipelines and tests."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Sequence

from .credentials import Credentials
from .runtime import Emulator
from .server import check_loopback, serve_forever
from .settings import EmulatorSettings


def _speed(value: str) -> float | None:
    if value.lower() == "instant":
        return None
    speed = float(value)
    if speed <= 0:
        raise argparse.ArgumentTypeError("speed must be positive or 'instant'")
    return speed


def _rate(value: str) -> float:
    rate = float(value)
    if not 0.0 <= rate <= 1.0:
        raise argparse.ArgumentTypeError("a rate is a share between 0 and 1")
    return rate


def build_parser() -> argparse.ArgumentParser:
    """The command line parser."""
    d = EmulatorSettings()
    p = argparse.ArgumentParser(prog="salesforce-bulk-emulator", description=__doc__)
    p.add_argument("--host", default="127.0.0.1", help="loopback address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8765, help="port (default 8765; 0 picks a free one)")
    p.add_argument(
        "--db",
        default="salesforce-emulator.sqlite3",
        help="SQLite file kept across restarts, or :memory: (default salesforce-emulator.sqlite3)",
    )
    p.add_argument(
        "--schema", dest="schema_path", default=None, help="org schema JSON (default: built-in org)"
    )
    p.add_argument(
        "--speed",
        dest="records_per_second",
        type=_speed,
        default=None,
        help="records processed per second, or 'instant' (default instant)",
    )
    p.add_argument(
        "--session-timeout", dest="session_timeout_seconds", type=float, default=d.session_timeout_seconds
    )
    p.add_argument("--upload-limit", dest="upload_limit_bytes", type=int, default=d.upload_limit_bytes)
    p.add_argument(
        "--request-limit",
        dest="request_limit_bytes",
        type=int,
        default=d.request_limit_bytes,
        help="largest body of a non-upload request, after decompression (default 1 MiB)",
    )
    p.add_argument("--job-page-size", type=int, default=d.job_page_size)
    p.add_argument(
        "--no-hard-delete",
        dest="hard_delete_enabled",
        action="store_false",
        help="answer hardDelete jobs with FEATURENOTENABLED",
    )
    p.add_argument(
        "--daily-api-requests", dest="daily_api_requests_max", type=int, default=d.daily_api_requests_max
    )
    p.add_argument(
        "--daily-bulk-batches", dest="daily_bulk_batches_max", type=int, default=d.daily_bulk_batches_max
    )
    p.add_argument("--min-api-version", type=float, default=d.min_api_version)
    p.add_argument("--max-api-version", type=float, default=d.max_api_version)
    p.add_argument("--error-503-rate", type=_rate, default=0.0, help="share of requests answered 503")
    p.add_argument("--error-500-rate", type=_rate, default=0.0, help="share of requests answered 500")
    p.add_argument("--drop-rate", type=_rate, default=0.0, help="share of answers cut off mid-response")
    p.add_argument(
        "--latency", dest="latency_seconds", type=float, default=0.0, help="seconds added to requests"
    )
    p.add_argument(
        "--session-expiry-every",
        dest="session_expiry_every_seconds",
        type=float,
        default=None,
        help="invalidate every session each N seconds",
    )
    p.add_argument(
        "--lock-failure-rate", type=_rate, default=0.0, help="share of records failing UNABLE_TO_LOCK_ROW"
    )
    p.add_argument("--job-failure-rate", type=_rate, default=0.0, help="share of jobs ending Failed")
    p.add_argument(
        "--lost-close-rate",
        type=_rate,
        default=0.0,
        help="share of job closes applied whose answer is then lost (connection closed)",
    )
    p.add_argument(
        "--hold-processing",
        action="store_true",
        help="start with processing held: closed jobs wait until the setting hold_processing is false",
    )
    p.add_argument("--seed", type=int, default=None, help="seed of the fault randomness")
    p.add_argument(
        "--jwt-public-key",
        default=None,
        help="PEM public key or X.509 certificate verifying JWT bearer assertions "
        "(default: a generated key pair whose private key is served at /__emulator__/credentials)",
    )
    p.add_argument("--log-level", default="info")
    return p


def describe(emulator: Emulator) -> str:
    """What a user needs to connect: base URL, logins and admin endpoints (never any access token)."""
    c = emulator.credentials
    base = emulator.base_url
    return "\n".join(
        [
            f"Salesforce Bulk API 2.0 emulator at {base}",
            f"  instance_url / login host: {base}",
            f"  token endpoint:            {base}/services/oauth2/token",
            f"  client_id:                 {c.client_id}",
            f"  client_secret:             {c.client_secret}",
            f"  username:                  {c.username}",
            f"  password:                  {c.password}",
            f"  security_token:            {c.security_token}",
            f"  refresh_token:             {c.refresh_token}",
            f"  JWT private key (PEM):     GET {base}/__emulator__/credentials",
            f"  settings:                  GET/POST {base}/__emulator__/settings",
            f"  stored records:            GET {base}/__emulator__/records/{{object}}",
            f"  database:                  {emulator.settings.db}",
            "",
            "For Airflow (the provider's connection, client credentials flow):",
            f"  export AIRFLOW_CONN_SALESFORCE_BULK_DEFAULT='{c.airflow_connection(base)}'",
        ]
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the emulator in the foreground until Ctrl-C."""
    args = vars(build_parser().parse_args(argv))
    log_level = args.pop("log_level")
    public_key_path = args.pop("jwt_public_key")
    settings = EmulatorSettings(**args)
    try:
        check_loopback(settings.host)
    except ValueError as exc:
        print(f"salesforce-bulk-emulator: {exc}", file=sys.stderr)
        return 2
    credentials = Credentials()
    if public_key_path:
        with open(public_key_path, encoding="utf-8") as key_file:
            credentials = dataclasses.replace(credentials, public_key_pem=key_file.read())

    def announce(emulator: Emulator) -> None:
        print(describe(emulator), flush=True)

    serve_forever(settings, credentials, log_level=log_level, on_start=announce)
    return 0


if __name__ == "__main__":
    sys.exit(main())
