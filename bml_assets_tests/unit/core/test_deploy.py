"""deploy/: the scale-out configuration stays valid and in step with the code that relies on it."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from bml_assets.cluster.workers import write_config
from bml_assets.definitions import MINUTE_VIEW_JOB, build_definitions
from bml_assets.defs.executor import CELERY_SETTINGS, celery_config
from bml_assets.domain.settings import Settings

DEPLOY = Path(__file__).resolve().parents[3] / "deploy"


def test_the_workers_config_has_the_executors_celery_settings() -> None:
    config = yaml.safe_load((DEPLOY / "celery.yaml").read_text())
    # dagster-celery reads execution.config only: everything must be inside it.
    assert set(config) == {"execution"} and set(config["execution"]) == {"config"}
    block = config["execution"]["config"]
    assert block["broker"] == {"env": "BML_CELERY_BROKER_URL"}
    assert block["backend"] == {"env": "BML_CELERY_BACKEND_URL"}
    assert block["config_source"] == {
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
    }
    assert block["config_source"] == dict(CELERY_SETTINGS)


def test_the_local_clusters_worker_file_is_the_executors_block(tmp_path: Path) -> None:
    path = write_config(tmp_path / "celery.yaml", broker="redis://127.0.0.1:1/0", backend="redis://127.0.0.1:1/1")
    assert yaml.safe_load(path.read_text()) == {
        "execution": {"config": celery_config("redis://127.0.0.1:1/0", "redis://127.0.0.1:1/1")}
    }


def test_the_deploy_instance_is_valid_dagster_config_on_postgresql(monkeypatch: pytest.MonkeyPatch) -> None:
    from dagster._core.instance.config import dagster_instance_config

    home = DEPLOY  # dagster.yaml is read from the folder it is in
    monkeypatch.setenv("DAGSTER_PG_URL", "postgresql+psycopg2://u@127.0.0.1:1/dagster")
    config, custom = dagster_instance_config(str(home))
    assert custom is None
    assert config["storage"]["postgres"]["postgres_url"] == {"env": "DAGSTER_PG_URL"}
    assert config["concurrency"]["pools"]["default_limit"] >= 1
    assert "run_coordinator" not in config  # concurrency: + run_queue: make it the queued one


@pytest.mark.parametrize("home", [DEPLOY, DEPLOY.parent], ids=["deploy", "one machine"])
def test_the_daemon_frees_the_pool_slots_of_ended_runs(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from dagster._core.instance.config import dagster_instance_config

    monkeypatch.setenv("DAGSTER_PG_URL", "postgresql+psycopg2://u@127.0.0.1:1/dagster")
    config, _ = dagster_instance_config(str(home))
    assert config["run_monitoring"] == {"enabled": True, "free_slots_after_run_end_seconds": 60}


def test_the_minute_view_job_takes_the_celery_executor_only_when_a_broker_is_set() -> None:
    plain = build_definitions(Settings()).resolve_job_def(MINUTE_VIEW_JOB)
    assert plain.executor_def.name == "in_process"
    celery = build_definitions(Settings(celery_broker_url="redis://127.0.0.1:6379/0"))
    job = celery.resolve_job_def(MINUTE_VIEW_JOB)
    assert job.executor_def.name == "celery"
    # The hot job must finish within its minute: it stays in its run's process.
    assert celery.resolve_job_def("hot_minute_job").executor_def.name == "in_process"


def test_a_celery_url_with_credentials_only_in_dotenv_is_refused_naming_the_variable(tmp_path: Path) -> None:
    from bml_assets.defs.executor import backfill_executor
    from bml_assets.domain.settings import SettingsError

    dotenv = tmp_path / ".env"
    dotenv.write_text("BML_CELERY_BROKER_URL=redis://:s3cret@10.0.0.5:6379/0\n")
    from_dotenv = Settings.from_env({}, dotenv_path=dotenv)  # read: commands without Celery work
    assert from_dotenv.celery_broker_url == "redis://:s3cret@10.0.0.5:6379/0"
    with pytest.raises(SettingsError) as refused:
        backfill_executor(from_dotenv)
    message = str(refused.value)
    assert message.startswith("BML_CELERY_BROKER_URL holds credentials and is set only in .env:")
    assert "export it instead" in message and "s3cret" not in message
    # Exported, it is taken (Dagster reads it from the environment by the variable's name).
    exported = Settings.from_env({"BML_CELERY_BROKER_URL": "redis://:s3cret@10.0.0.5:6379/0"}, dotenv_path=dotenv)
    assert backfill_executor(exported).name == "celery"
    # Without credentials, .env is enough: the URL itself goes into the executor's config.
    dotenv.write_text("BML_CELERY_BROKER_URL=redis://10.0.0.5:6379/0\n")
    assert backfill_executor(Settings.from_env({}, dotenv_path=dotenv)).name == "celery"
