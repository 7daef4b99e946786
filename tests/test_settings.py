from pathlib import Path

import pytest

from scheduler.errors import ConfigurationError
from scheduler.settings import Settings


def test_embedded_defaults_live_under_the_data_dir(tmp_path):
    settings = Settings.from_env({"PEERGRID_DATA_DIR": str(tmp_path)})

    assert settings.data_dir == tmp_path
    assert settings.database_url == f"sqlite:///{tmp_path / 'peergrid.sqlite'}"
    assert settings.broker_url == f"sqla+sqlite:///{tmp_path / 'broker.sqlite'}"
    assert settings.worker_broker_url == settings.broker_url
    assert settings.embedded


def test_scaled_setup_comes_from_the_environment(tmp_path):
    settings = Settings.from_env(
        {
            "PEERGRID_DATA_DIR": str(tmp_path),
            "PEERGRID_DATABASE_URL": "postgresql+psycopg://u:p@db/peergrid",
            "PEERGRID_BROKER_URL": "redis://redis:6379/0",
            "PEERGRID_WORKER_BROKER_URL": "redis://broker.example:6379/0",
            "PEERGRID_SECRET_KEY": "s3cret",
            "PEERGRID_REOFFER_AFTER": "12.5",
        }
    )

    assert settings.database_url.startswith("postgresql")
    assert settings.broker_url == "redis://redis:6379/0"
    assert settings.worker_broker_url == "redis://broker.example:6379/0"
    assert settings.secret_key == "s3cret"
    assert settings.reoffer_after_s == 12.5
    assert not settings.embedded


def test_a_secret_is_made_once_and_kept(tmp_path):
    first = Settings.from_env({"PEERGRID_DATA_DIR": str(tmp_path)})
    second = Settings.from_env({"PEERGRID_DATA_DIR": str(tmp_path)})

    assert len(first.secret_key) > 40
    assert first.secret_key == second.secret_key
    assert (Path(tmp_path) / "secret_key").stat().st_mode & 0o077 == 0


def test_a_bad_number_says_which_setting(tmp_path):
    with pytest.raises(ConfigurationError, match="PEERGRID_DEFAULT_TIMEOUT"):
        Settings.from_env({"PEERGRID_DATA_DIR": str(tmp_path), "PEERGRID_DEFAULT_TIMEOUT": "soon"})


def test_the_starter_grant_is_on_only_in_the_embedded_set_up(tmp_path):
    embedded = Settings.from_env({"PEERGRID_DATA_DIR": str(tmp_path)})
    scaled = Settings.from_env({"PEERGRID_DATA_DIR": str(tmp_path), "PEERGRID_DATABASE_URL": "postgresql://x/y"})
    chosen = Settings.from_env({"PEERGRID_DATA_DIR": str(tmp_path), "PEERGRID_STARTER_CREDITS": "2.5",
                                "PEERGRID_MIN_PAYOUT": "0.5"})
    assert embedded.starter_credits == 100_000_000 and scaled.starter_credits == 0
    assert chosen.starter_credits == 2_500_000 and chosen.min_payout == 500_000
    with pytest.raises(ConfigurationError, match="PEERGRID_STARTER_CREDITS"):
        Settings.from_env({"PEERGRID_DATA_DIR": str(tmp_path), "PEERGRID_STARTER_CREDITS": "lots"})


def test_a_new_account_gets_the_starter_grant(core):
    from scheduler import ledger
    from scheduler.accounts import create_user

    with core.transaction() as session:
        user = create_user(session, "new@example.com", "password1", starter_credits=core.settings.starter_credits)
        assert ledger.balances(session, user.id)["available"] == 100_000_000


def test_the_log_limit_per_attempt_is_read_and_must_be_positive(tmp_path):
    default = Settings.from_env({"PEERGRID_DATA_DIR": str(tmp_path)})
    chosen = Settings.from_env({"PEERGRID_DATA_DIR": str(tmp_path), "PEERGRID_MAX_LOG_BYTES_PER_ATTEMPT": "65536"})
    assert default.max_log_bytes_per_attempt == 16 * 1024 * 1024
    assert chosen.max_log_bytes_per_attempt == 65536
    with pytest.raises(ConfigurationError, match="PEERGRID_MAX_LOG_BYTES_PER_ATTEMPT"):
        Settings.from_env({"PEERGRID_DATA_DIR": str(tmp_path), "PEERGRID_MAX_LOG_BYTES_PER_ATTEMPT": "0"})


def test_credit_settings_are_read_exactly_not_through_floats(tmp_path):
    # 9007199254.740993 credits is 2**53 + 1 micro-credits: a float cannot hold it.
    settings = Settings.from_env({"PEERGRID_MIN_PAYOUT": "9007199254.740993", "PEERGRID_STARTER_CREDITS": "0.1"},
                                 data_dir=tmp_path)
    assert settings.min_payout == 2**53 + 1 and settings.starter_credits == 100_000
    for wrong in ("0.0000001", "lots", "nan", "-1"):
        with pytest.raises(ConfigurationError, match="PEERGRID_MIN_PAYOUT"):
            Settings.from_env({"PEERGRID_MIN_PAYOUT": wrong}, data_dir=tmp_path)


def test_the_health_file_is_read_once_and_none_by_default(tmp_path):
    default = Settings.from_env({"PEERGRID_DATA_DIR": str(tmp_path)})
    chosen = Settings.from_env({"PEERGRID_DATA_DIR": str(tmp_path), "PEERGRID_HEALTH_FILE": "/tmp/peergrid-health.json"})
    assert default.health_file is None
    assert chosen.health_file == Path("/tmp/peergrid-health.json")


def test_the_web_refuses_to_start_on_a_data_dir_it_cannot_write(tmp_path, sqlite_url):
    from dataclasses import replace

    from scheduler.errors import PeergridError
    from web import create_app

    (tmp_path / "taken").write_text("a file where the data dir should be")
    settings = Settings.from_env(
        {"PEERGRID_DATABASE_URL": sqlite_url, "PEERGRID_SECRET_KEY": "x",
         "PEERGRID_BROKER_URL": f"sqla+sqlite:///{tmp_path / 'broker.sqlite'}"},
        data_dir=tmp_path,
    )
    with pytest.raises(PeergridError, match=r"Cannot write uploaded outputs under .*taken/artifacts.*chown"):
        create_app(replace(settings, data_dir=tmp_path / "taken"))
    assert create_app(settings)  # and starts where it can
