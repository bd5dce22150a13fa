"""One production stack for the session: PostgreSQL, Redis, moto's S3, the emulator, and Airflow on Celery.

The stack tests are marked ``stack`` and deselected by default (``addopts`` in pyproject.toml):
``make test-stack`` runs them. A server that cannot start fails them, naming what to install: they are
only run on purpose.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.airflow.postgres_cluster import postgres_cluster
from tests.stack.airflow_stack import AirflowStack
from tests.stack.scenario_dags import ACCOUNTS, BUCKET, FROZEN_SUCCESS, FROZEN_WAITING, MAIN, write_dags
from tests.stack.servers import Emulator, MotoS3, Redis

#: From the first process started until every DAG is parsed: wide, the machine may be busy.
STARTUP_SECONDS = 600.0
#: Pool processes per Celery worker: the main run's 12 tasks need both workers, or one after a kill.
CONCURRENCY = 6


def _seed_accounts(emulator: Emulator) -> None:
    """The org's Accounts before any run: what the extracts must find, every one."""
    from airflow_provider_salesforce_bulk.client import (
        BulkIngestClient,
        ClientCredentialsAuth,
        SalesforceSession,
        TokenCache,
    )

    c = emulator.credentials
    accounts = [{"Name": f"Stack Account {i:05d}"} for i in range(ACCOUNTS)]

    async def seed() -> None:
        auth = ClientCredentialsAuth(c["client_id"], c["client_secret"], emulator.base_url)
        async with SalesforceSession(auth, token_cache=TokenCache()) as session:
            async for _ in BulkIngestClient(session).perform_operation(
                "insert", "Account", accounts, polling_interval=0.2
            ):
                pass

    asyncio.run(seed())
    assert len(emulator.records("Account")) == ACCOUNTS


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[AirflowStack, MotoS3, Emulator]]:
    root: Path = tmp_path_factory.mktemp("stack")
    began = time.monotonic()
    # max_connections: every Airflow process and Celery pool process keeps a few.
    with postgres_cluster("log_statement=none", "max_connections=400") as pg:
        pg_url = f"postgresql+psycopg://{pg.user}@{pg.host}:{pg.port}/{pg.dbname}"
        redis = Redis(root)
        redis.start()
        s3 = MotoS3(root, BUCKET)
        emulator = Emulator(root)
        airflow = AirflowStack(root, pg_url, redis, s3, emulator, CONCURRENCY)
        try:
            _seed_accounts(emulator)
            write_dags(airflow.dags)
            airflow.start()
            airflow.wait_parsed([MAIN, FROZEN_SUCCESS, FROZEN_WAITING], STARTUP_SECONDS)
            up = time.monotonic() - began
            print(f"\nstack up in {up:.0f} s (PostgreSQL, Redis, moto, emulator, Airflow)")
            yield airflow, s3, emulator
        except BaseException:
            print(f"\n==== the stack did not start; its logs under {root}")
            airflow.diagnose(MAIN, "-")
            raise
        finally:
            airflow.close()
            emulator.close()
            s3.close()
            redis.close()
