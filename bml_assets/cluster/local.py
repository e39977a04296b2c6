"""The whole local cluster: ``bml cluster up`` / ``down`` / ``run`` (SPEC §10 on one machine).

What belongs here: starting PostgreSQL (two databases: ``bml`` for the ledger and the REST
budget, ``dagster`` for Dagster's runs, events and schedules), Redis, moto's S3 server with
the lake's bucket, N Celery workers and, for an offline demo, the replay server, all on
127.0.0.1 and under one folder; the environment that points bml and Dagster at them
(``cluster.env``, also what ``bml cluster run`` adds to a command's); stopping them. What
stays out: each service's own details (the modules beside this one).

The folder (default ``.bml-cluster``)::

    cluster.json     ports, process ids, URLs (what ``down`` stops)
    cluster.env      the environment (KEY=value lines; ``set -a; . cluster.env`` in a shell)
    postgres/ redis/ moto/ workers/ replay/   each service's data and log
    dagster_home/    DAGSTER_HOME: deploy/dagster.yaml (PostgreSQL storage, queued runs)
    work/            BML_WORK_DIR: the Vision cache and the commands' reports
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Final

from bml_assets.cluster import moto, postgres, redis, workers
from bml_assets.cluster.services import ServiceUnavailable, free_port, stop_group, wait_for_port
from bml_assets.domain.settings import Settings
from bml_assets.sources.rest import REST_POOL

DEFAULT_DIR: Final = Path(".bml-cluster")
BUCKET: Final = "bml-lake"
REST_POOL_SLOTS: Final = 8  # deploy/dagster.yaml's pools.default_limit
LAKE_PREFIX: Final = "lake"
DEPLOY_DAGSTER_YAML: Final = Path(__file__).resolve().parents[2] / "deploy" / "dagster.yaml"


@dataclass
class ClusterState:
    """What ``up`` started (``cluster.json``)."""

    folder: str
    env: dict[str, str]
    postgres_port: int
    redis_port: int
    moto_pid: int
    worker_pids: list[int] = field(default_factory=list)
    replay_pid: int | None = None

    def save(self) -> None:
        Path(self.folder, "cluster.json").write_text(json.dumps(asdict(self), indent=2))
        lines = [f"{k}={v}" for k, v in sorted(self.env.items())]
        Path(self.folder, "cluster.env").write_text("\n".join(lines) + "\n")

    @classmethod
    def load(cls, folder: Path) -> ClusterState:
        path = folder / "cluster.json"
        try:
            return cls(**json.loads(path.read_text()))
        except FileNotFoundError:
            raise ServiceUnavailable(
                f"no cluster in {folder}: start one with `bml cluster up --dir {folder}`"
            ) from None


def _bml(*args: str) -> list[str]:
    return [sys.executable, "-m", "bml_assets.cli", *args]


def _spawn(command: Sequence[str], env: Mapping[str, str], log: Path) -> subprocess.Popen:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        return subprocess.Popen(
            list(command),
            env=dict(env),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )


def _wait_for_workers(broker: str, procs: Sequence[subprocess.Popen], logs: Path, timeout: float) -> None:
    from celery import Celery

    app = Celery(broker=broker)
    deadline = time.monotonic() + timeout
    replies: list[object] = []
    try:
        while time.monotonic() < deadline:
            dead = [p for p in procs if p.poll() is not None]
            if dead:
                raise ServiceUnavailable(
                    f"a Celery worker exited with status {dead[0].returncode} at start-up; its log is in {logs}"
                )
            replies = app.control.ping(timeout=1.0) or []
            if len(replies) >= len(procs):
                return
    finally:
        app.close()
    raise ServiceUnavailable(f"{len(replies)} of {len(procs)} Celery workers answered within {timeout:g} s ({logs})")


def up(
    folder: Path = DEFAULT_DIR,
    *,
    worker_count: int = 2,
    replay_symbols: Sequence[str] | None = None,
    replay_trades_per_day: int = 6000,
    base_env: Mapping[str, str] | None = None,
    lake_root: str | None = None,
    timeout: float = 120.0,
) -> ClusterState:
    """Start the cluster in ``folder`` (see the module docstring) and return its state; with
    ``replay_symbols``, also a replay server of those symbols, and Vision/REST point at it;
    ``lake_root``: another lake than the bucket in moto (a folder every worker can reach).
    ``BML_SYMBOLS`` and ``BML_START_DATE`` of ``base_env`` (default: this environment and its
    ``.env``) become the cluster's (without ``BML_SYMBOLS``, the replay symbols).
    A failure stops what was started and raises ``ServiceUnavailable`` naming the service."""
    folder = folder.resolve()
    if (folder / "cluster.json").exists():
        raise ServiceUnavailable(f"a cluster is already set up in {folder}: `bml cluster down --dir {folder}` first")
    folder.mkdir(parents=True, exist_ok=True)
    started: dict[str, object] = {}
    try:
        pg_port = free_port()
        started["postgres"] = True  # before: a start that times out may leave a server running
        server = postgres.start(folder / "postgres", pg_port)
        state_url = postgres.create_database(server, "bml")
        dagster_url = postgres.create_database(server, "dagster")

        redis_port = free_port()
        started["redis"] = True  # before: redis-server daemonises before it answers
        broker = redis.start(folder / "redis", redis_port)

        moto_port = free_port()
        moto_proc = moto.start(moto_port, folder / "moto" / "moto.log")
        started["moto"] = moto_proc.pid
        endpoint = f"http://127.0.0.1:{moto_port}"
        moto.create_bucket(endpoint, BUCKET)

        home = folder / "dagster_home"
        home.mkdir(exist_ok=True)
        shutil.copyfile(DEPLOY_DAGSTER_YAML, home / "dagster.yaml")
        env = {
            "DAGSTER_HOME": str(home),
            "DAGSTER_PG_URL": dagster_url,
            "BML_STATE_URL": state_url,
            "BML_LAKE_ROOT": lake_root or f"s3://{BUCKET}/{LAKE_PREFIX}",
            "BML_S3_ENDPOINT_URL": endpoint,
            "BML_WORK_DIR": str(folder / "work"),
            "BML_CELERY_BROKER_URL": f"{broker}/0",
            "BML_CELERY_BACKEND_URL": f"{broker}/1",
            **moto.CREDENTIALS,
        }
        process_env = {**(os.environ if base_env is None else base_env), **env}

        replay_pid = None
        if replay_symbols:
            port = free_port()
            replay = _spawn(
                _bml(
                    "replay-server",
                    "--port",
                    str(port),
                    "--ws-port",
                    str(free_port()),
                    "--symbols",
                    ",".join(replay_symbols),
                    "--trades-per-day",
                    str(replay_trades_per_day),
                ),
                process_env,
                folder / "replay" / "replay.log",
            )
            replay_pid = started["replay"] = replay.pid
            wait_for_port(port, what="the replay server", alive=replay)
            env |= {"BML_VISION_BASE_URL": f"http://127.0.0.1:{port}", "BML_REST_BASE_URL": f"http://127.0.0.1:{port}"}

        # The partition set is fixed here, for the workers and every `bml cluster run` alike: the
        # workers build the definitions from it (a command asking for more is refused).
        own = Settings.from_env(os.environ if base_env is None else base_env)
        symbols = replay_symbols if replay_symbols and own.symbols == Settings.symbols else own.symbols
        env |= {"BML_SYMBOLS": ",".join(symbols), "BML_START_DATE": own.start_date.isoformat()}
        process_env |= env

        # The REST pool's limit set once, explicitly: a limit Dagster takes from `default_limit`
        # is rewritten by any process whose instance config says otherwise.
        pools = subprocess.run(
            [workers.dagster_command(), "instance", "concurrency", "set", REST_POOL, str(REST_POOL_SLOTS)],
            env=process_env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if pools.returncode != 0:
            raise ServiceUnavailable(f"dagster could not set the {REST_POOL} pool: {pools.stderr.strip()[-500:]}")

        config = workers.write_config(
            folder / "workers" / "celery.yaml",
            broker=env["BML_CELERY_BROKER_URL"],
            backend=env["BML_CELERY_BACKEND_URL"],
        )
        procs = []
        for i in range(1, worker_count + 1):
            proc = workers.start(f"bml-w{i}@127.0.0.1", config, process_env, folder / "workers" / f"w{i}.log")
            procs.append(proc)
            started.setdefault("workers", []).append(proc.pid)  # type: ignore[union-attr]
        _wait_for_workers(env["BML_CELERY_BROKER_URL"], procs, folder / "workers", timeout)
        pids = [p.pid for p in procs]

        state = ClusterState(str(folder), env, pg_port, redis_port, moto_proc.pid, pids, replay_pid)
        state.save()
        return state
    except BaseException:
        _stop(folder, started)
        raise


def _stop(folder: Path, started: Mapping[str, object]) -> None:
    for pid in started.get("workers", []) or []:  # type: ignore[union-attr]
        stop_group(pid)
    for name in ("replay", "moto"):
        if isinstance(started.get(name), int):
            stop_group(started[name])  # type: ignore[arg-type]
    if started.get("redis"):
        redis.stop(folder / "redis")
    if started.get("postgres"):
        postgres.stop(folder / "postgres")


def down(folder: Path = DEFAULT_DIR, *, purge: bool = False) -> None:
    """Stop every service of the cluster in ``folder``; ``purge`` also deletes its data."""
    folder = folder.resolve()
    state = ClusterState.load(folder)
    _stop(
        folder,
        {
            "workers": state.worker_pids,
            "replay": state.replay_pid,
            "moto": state.moto_pid,
            "redis": True,
            "postgres": True,
        },
    )
    (folder / "cluster.json").unlink(missing_ok=True)
    if purge:
        postgres.remove(folder / "postgres")
        shutil.rmtree(folder, ignore_errors=True)


def environment(folder: Path = DEFAULT_DIR) -> dict[str, str]:
    """The cluster's environment (what ``bml cluster run`` adds to a command's)."""
    return dict(ClusterState.load(folder.resolve()).env)


@contextmanager
def local_cluster(folder: Path, **options: object) -> Iterator[ClusterState]:
    """``up`` for the duration of the block, then ``down`` (tests)."""
    state = up(folder, **options)  # type: ignore[arg-type]
    try:
        yield state
    finally:
        down(folder)
