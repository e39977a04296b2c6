"""Scale-out end to end (issue 12, SPEC §10): a backfill of 2 symbols × 10 days on the local
cluster — PostgreSQL (ledger and Dagster), Redis, two Celery workers, the lake in moto's S3 —
against the replay server, checked object by object against the ledger, row by row against
the same days built on one machine, and in the Dagster instance the UI reads.

Needs PostgreSQL, redis-server and moto_server (``.ci/run`` installs them); skipped, saying
which is missing, where they cannot be had.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from bml_assets.cluster import postgres
from bml_assets.cluster.local import ClusterState, local_cluster
from bml_assets.cluster.services import ServiceUnavailable, free_port, wait_for_port
from bml_assets.cluster.workers import pool_processes
from bml_assets.domain.schema import MINUTE_VIEW
from bml_assets.replay.clock import MarketClock
from bml_assets.replay.market import MarketConfig, SyntheticMarket
from bml_assets.replay.server import ReplayServer

CLOCK_AT = dt.datetime(2024, 6, 3, 10, 30, 20, tzinfo=dt.UTC)
SYMBOLS = ("BTCUSDT", "ETHUSDT")
FIRST, LAST = dt.date(2024, 3, 1), dt.date(2024, 3, 10)
BML = [sys.executable, "-m", "bml_assets.cli"]
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def server() -> Iterator[ReplayServer]:
    market = SyntheticMarket(MarketConfig(seed=11, trades_per_day=600))
    with ReplayServer(market=market, clock=MarketClock.fixed(CLOCK_AT)) as replay:
        yield replay


def _base_env(server: ReplayServer) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BML_", "AWS_")) and k != "DAGSTER_HOME"}
    env.update(
        BML_SYMBOLS=",".join(SYMBOLS),
        BML_START_DATE="2024-01-01",
        BML_VISION_BASE_URL=server.base_url,
        BML_REST_BASE_URL=server.base_url,
    )
    return env


@pytest.fixture(scope="module")
def cluster(server: ReplayServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterState]:
    folder = tmp_path_factory.mktemp("cluster")
    try:
        with local_cluster(folder, worker_count=2, base_env=_base_env(server)) as state:
            yield state
    except ServiceUnavailable as exc:
        pytest.skip(f"no local cluster here: {exc}")


def _bml(args: list[str], env: dict[str, str], cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*BML, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def backfilled(cluster: ClusterState, server: ReplayServer) -> ClusterState:
    env = {**_base_env(server), **cluster.env}
    args = ["backfill-range", "--start", FIRST.isoformat(), "--end", LAST.isoformat(), "--workers", "2"]
    done = _bml(args, env, Path(cluster.folder))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "built 20 of 20 partition(s)" in done.stdout, done.stdout[-2000:]
    assert "final scan: clean" in done.stdout
    # The workers downloaded, not this process: the total comes from their steps' outputs.
    traffic = re.search(r"traffic: ([\d.]+) (KiB|MiB) received", done.stdout)
    assert traffic is not None and float(traffic.group(1)) > 0, done.stdout[-1500:]
    return cluster


def _s3(cluster: ClusterState):
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=cluster.env["BML_S3_ENDPOINT_URL"],
        aws_access_key_id=cluster.env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=cluster.env["AWS_SECRET_ACCESS_KEY"],
        region_name=cluster.env["AWS_DEFAULT_REGION"],
    )


def _ledger_rows(cluster: ClusterState) -> list[tuple[str, str, dt.date, str, str]]:
    import sqlalchemy as sa

    engine = sa.create_engine(cluster.env["BML_STATE_URL"])
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                sa.text("SELECT dataset, symbol, date, path, content_hash FROM partitions WHERE status = 'committed'")
            ).all()
    finally:
        engine.dispose()
    return [tuple(r) for r in rows]


def _minutes_matching_their_objects(cluster: ClusterState) -> set[tuple[str, dt.date]]:
    """Every parquet object's sha256 equals its ledger row's and every committed row has its
    object; returns the committed minute-view partitions."""
    s3 = _s3(cluster)
    bucket, prefix = cluster.env["BML_LAKE_ROOT"].removeprefix("s3://").split("/", 1)
    objects = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix + "/"):
        for item in page.get("Contents", []):
            key = item["Key"].removeprefix(prefix + "/")
            if key.endswith(".parquet"):
                objects[key] = hashlib.sha256(s3.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()).hexdigest()
    rows = _ledger_rows(cluster)
    assert {r[3]: r[4] for r in rows} == objects
    return {(r[1], r[2]) for r in rows if r[0] == MINUTE_VIEW.name}


def _days(first: dt.date, last: dt.date) -> set[tuple[str, dt.date]]:
    n = (last - first).days + 1
    return {(s, first + dt.timedelta(days=i)) for s in SYMBOLS for i in range(n)}


def test_every_object_in_s3_has_the_sha256_its_ledger_row_records(backfilled: ClusterState) -> None:
    assert _days(FIRST, LAST) <= _minutes_matching_their_objects(backfilled)  # 2 symbols × 10 days


def test_the_steps_ran_on_both_celery_workers_and_the_runs_are_in_postgresql(backfilled: ClusterState) -> None:
    from dagster import AssetKey, DagsterEventType, DagsterInstance

    os.environ["DAGSTER_PG_URL"] = backfilled.env["DAGSTER_PG_URL"]  # the instance's dagster.yaml reads it
    with DagsterInstance.from_config(backfilled.env["DAGSTER_HOME"]) as instance:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        runs = [r for r in instance.get_runs() if r.job_name == "minute_view_job"]
        assert runs and all(r.status.value == "SUCCESS" for r in runs), [(r.run_id, r.status) for r in runs]
        hosts: set[str] = set()
        for run in runs:
            for entry in instance.all_logs(run.run_id, of_type=DagsterEventType.ENGINE_EVENT):
                data = entry.dagster_event.engine_event_data if entry.dagster_event else None
                for key, value in (data.metadata if data else {}).items():
                    if key == "Celery worker":
                        hosts.add(str(value.value).split("@")[0])
        assert hosts == {"bml-w1", "bml-w2"}
        materialized = instance.fetch_materializations(AssetKey("minute_view"), limit=1000).records
        keys = {r.partition_key for r in materialized}
        assert len(keys) == 20


def test_the_same_days_built_on_one_machine_are_row_for_row_equal(
    backfilled: ClusterState, server: ReplayServer, tmp_path: Path
) -> None:
    env = _base_env(server) | {"BML_LAKE_ROOT": str(tmp_path / "lake")}
    done = _bml(
        ["backfill-range", "--start", FIRST.isoformat(), "--end", LAST.isoformat(), "--workers", "1"], env, tmp_path
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    from pyarrow import fs

    s3 = fs.S3FileSystem(
        endpoint_override=backfilled.env["BML_S3_ENDPOINT_URL"].removeprefix("http://"),
        scheme="http",
        access_key=backfilled.env["AWS_ACCESS_KEY_ID"],
        secret_key=backfilled.env["AWS_SECRET_ACCESS_KEY"],
        region=backfilled.env["AWS_DEFAULT_REGION"],
    )
    root = backfilled.env["BML_LAKE_ROOT"].removeprefix("s3://")
    compared = 0
    for symbol in SYMBOLS:
        day = FIRST
        while day <= LAST:
            key = f"futures/um/minute/symbol={symbol}/date={day.isoformat()}/part.parquet"
            local = pq.ParquetFile(tmp_path / "lake" / key).read()
            with s3.open_input_file(f"{root}/{key}") as f:
                remote = pq.ParquetFile(f).read()
            assert remote.num_rows == 1440
            assert remote.equals(local), (symbol, day)
            compared += 1
            day += dt.timedelta(days=1)
    assert compared == 20


def test_dagster_webserver_on_the_instance_shows_the_runs(backfilled: ClusterState, server: ReplayServer) -> None:
    port = free_port()
    env = {**_base_env(server), **backfilled.env}
    web = subprocess.Popen(
        [
            str(Path(sys.executable).with_name("dagster-webserver")),
            "-w",
            str(REPO / "workspace.yaml"),
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
        ],
        env=env,
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_for_port(port, what="dagster-webserver", timeout=120, alive=web)
        query = (
            '{ runsOrError(filter: {pipelineName: "minute_view_job"}) { ... on Runs { results { runId status } } } }'
        )
        deadline = time.monotonic() + 60
        while True:
            try:
                request = urllib.request.Request(
                    f"http://127.0.0.1:{port}/graphql",
                    data=json.dumps({"query": query}).encode(),
                    headers={"Content-Type": "application/json"},
                )
                with urllib.request.urlopen(request, timeout=30) as response:
                    results = json.load(response)["data"]["runsOrError"]["results"]
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(1)
        assert results and {r["status"] for r in results} == {"SUCCESS"}
    finally:
        os.killpg(web.pid, 15)
        web.wait(timeout=30)


_RECEIVED = re.compile(r"Task execute_plan\[([0-9a-f-]+)\] received")


def _worker_logs(cluster: ClusterState) -> str:
    return "\n".join(
        (Path(cluster.folder) / "workers" / f"w{i}.log").read_text(errors="replace")
        for i in range(1, len(cluster.worker_pids) + 1)
    )


def _busy_worker(cluster: ClusterState) -> int | None:
    """The pid of a worker's pool process with a step in hand (a task its log shows received and
    not yet ended), else None."""
    for i, pid in enumerate(cluster.worker_pids, start=1):
        log = (Path(cluster.folder) / "workers" / f"w{i}.log").read_text(errors="replace")
        received = _RECEIVED.findall(log)
        if received and f"execute_plan[{received[-1]}] succeeded" not in log:
            pool = pool_processes(pid)
            if pool:
                return pool[-1]
    return None


def test_a_worker_killed_mid_step_loses_nothing_and_leaves_lake_and_ledger_consistent(
    backfilled: ClusterState, server: ReplayServer
) -> None:
    """SIGKILL of the process running a step: Celery gives the step back to the broker (acks late,
    reject on worker lost), a worker runs it again, the backfill ends clean, and every object
    still has its ledger row's sha256."""
    env = {**_base_env(server), **backfilled.env}
    days = ["--start", "2024-04-01", "--end", "2024-04-02", "--workers", "2", "--partitions-per-run", "1"]
    backfill = subprocess.Popen(
        [*BML, "backfill-range", *days],
        env=env,
        cwd=backfilled.folder,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    # A worker logs "received" before its pool process takes the task, so a kill can land between
    # two tasks; kill again until Celery reports a step lost with the process (at most 5 kills).
    lost = "WorkerLostError('Worker exited prematurely: signal 9 (SIGKILL) Job:"
    lost_before = _worker_logs(backfilled).count(lost)  # the workers serve the whole module

    def step_lost() -> bool:
        return _worker_logs(backfilled).count(lost) > lost_before

    killed: list[int] = []
    deadline = time.monotonic() + 300
    while len(killed) < 5 and backfill.poll() is None and time.monotonic() < deadline:
        if step_lost():
            break
        victim = _busy_worker(backfilled)
        if victim is None or victim in killed:
            time.sleep(0.01)
            continue
        os.kill(victim, signal.SIGKILL)
        killed.append(victim)
        # Let the worker notice the death and report the step it lost, if any, before judging.
        noticed = time.monotonic() + 30
        while f"pid:{victim} exited" not in _worker_logs(backfilled) and time.monotonic() < noticed:
            time.sleep(0.05)
        reported = time.monotonic() + 5
        while not step_lost() and time.monotonic() < reported:
            time.sleep(0.05)
    out, _ = backfill.communicate(timeout=600)
    assert killed, "no step was ever seen running on a worker:\n" + out[-2500:]
    assert backfill.returncode == 0, out[-3000:]
    assert "built 4 of 4 partition(s)" in out and "final scan: clean" in out, out[-2000:]
    logs = _worker_logs(backfilled)
    # A process died with a step in hand, and Celery saw it (the step went back to the broker).
    assert all(f"pid:{pid} exited with 'signal 9 (SIGKILL)'" in logs for pid in killed), killed
    assert step_lost(), f"none of {len(killed)} kill(s) caught a step in hand"
    assert _days(dt.date(2024, 4, 1), dt.date(2024, 4, 2)) <= _minutes_matching_their_objects(backfilled)


def _held_slots_and_unfinished_runs(cluster: ClusterState) -> tuple[int, list[str]]:
    import sqlalchemy as sa

    engine = sa.create_engine(cluster.env["DAGSTER_PG_URL"])
    try:
        with engine.connect() as conn:
            held = conn.execute(sa.text("SELECT count(*) FROM concurrency_slots WHERE run_id IS NOT NULL")).scalar()
            unfinished = conn.execute(
                sa.text("SELECT run_id FROM runs WHERE status NOT IN ('SUCCESS', 'FAILURE', 'CANCELED')")
            ).all()
    finally:
        engine.dispose()
    return int(held or 0), [r[0] for r in unfinished]


def test_postgresql_restarted_mid_backfill_the_runs_it_cut_off_are_released_and_run_again(
    backfilled: ClusterState, server: ReplayServer
) -> None:
    """The ledger's and Dagster's server goes away mid-backfill (an immediate stop: every
    connection cut) and comes back 12 s later. The runs it cut off are marked failed, give back
    their REST pool slots (before, they kept them and every other run waited for the pool
    forever) and run again: the same command ends with every partition built, a clean scan,
    no slot held and no run left unfinished."""
    env = {**_base_env(server), **backfilled.env}
    days = ["backfill-range", "--start", "2024-05-01", "--end", "2024-05-02", "--workers", "2"]
    days += ["--partitions-per-run", "1"]
    backfill = subprocess.Popen(
        [*BML, *days], env=env, cwd=backfilled.folder, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 300
    while _busy_worker(backfilled) is None and backfill.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert backfill.poll() is None, "the backfill ended before any step ran on a worker"
    folder = Path(backfilled.folder) / "postgres"
    postgres.stop(folder)  # immediate: every connection is cut
    # Longer than dagster-postgres's own connection retries (≈ 2 s): they give up with their own
    # error ("too many retries for DB connection"), which must be known for what it is.
    time.sleep(12)
    postgres.start(folder, backfilled.postgres_port)
    try:
        out, err = backfill.communicate(timeout=600)
    except subprocess.TimeoutExpired:
        backfill.kill()
        out, err = backfill.communicate()
        pytest.fail("the backfill did not end after PostgreSQL came back:\n" + out[-2000:] + err[-2000:])
    assert backfill.returncode == 0, out[-3000:] + err[-3000:]
    assert "built 4 of 4 partition(s)" in out and "final scan: clean" in out, out[-2000:]
    # The runs it cut off were said, released and run again (a run between steps may also just
    # wait; the one whose step a worker held cannot: its events go to PostgreSQL all along).
    again = [line for line in err.splitlines() if "PostgreSQL is back; running it again" in line]
    assert again, err[-3000:]
    assert all(
        re.fullmatch(r"2024-05-0[12]\|(BTC|ETH)USDT: PostgreSQL is back; running it again", line) for line in again
    ), again
    assert _held_slots_and_unfinished_runs(backfilled) == (0, [])
    assert _days(dt.date(2024, 5, 1), dt.date(2024, 5, 2)) <= _minutes_matching_their_objects(backfilled)
