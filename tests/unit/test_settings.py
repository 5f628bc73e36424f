"""Settings: TOML file plus BATCH_* environment, readable ConfigErrors, secrets hidden, stable digest."""

from __future__ import annotations

import os
import re
from decimal import Decimal
from pathlib import Path

import pytest

from batch.domain.model import ReconciliationPolicy
from batch.errors import ConfigError
from batch.settings import Settings, load_settings

SECRET = "s3cr3t-Value-9f8e7d"
DSN_PASSWORD = "pw-Hunter2-xyz"

CONFIG = f"""
[investsuite]
base_url = "https://api.example.test"
access_key_id = "AKID-1"
secret_access_key = "{SECRET}"

[database]
journal_dsn = "postgresql://batch:{DSN_PASSWORD}@db.example.test/journal"

[run]
timezone = "Europe/Amsterdam"
concurrency = 12

[policy]
allowed_statuses = ["ACTIVE", "WAITING_FOR_FUNDS"]
reconciliation_tolerance = "0.05"
reconciliation_policy = "hold"
max_payout = {{ EUR = "25000.00" }}
"""


def isolate(monkeypatch: pytest.MonkeyPatch) -> None:
    """Drop every BATCH_* variable of the surrounding environment so only the test's own apply."""
    for name in list(os.environ):
        if name.upper().startswith("BATCH_"):
            monkeypatch.delenv(name)


def write(directory: Path, text: str, name: str = "batch.toml") -> Path:
    path = directory / name
    path.write_text(text, encoding="utf-8")
    return path


def test_load_from_toml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Values in the TOML file are loaded, typed (Decimal, enum) and the rest keep their defaults."""
    isolate(monkeypatch)
    settings = load_settings(write(tmp_path, CONFIG))
    assert settings.investsuite.base_url == "https://api.example.test"
    assert settings.run.timezone == "Europe/Amsterdam"
    assert settings.run.concurrency == 12
    assert settings.policy.allowed_statuses == ("ACTIVE", "WAITING_FOR_FUNDS")
    assert settings.policy.reconciliation_tolerance == Decimal("0.05")
    assert isinstance(settings.policy.reconciliation_tolerance, Decimal)
    assert settings.policy.reconciliation_policy is ReconciliationPolicy.HOLD
    assert settings.policy.max_payout == {"EUR": Decimal("25000.00")}
    assert settings.investsuite.page_size == 100  # default kept
    assert settings.investsuite.secret_access_key is not None
    assert settings.investsuite.secret_access_key.get_secret_value() == SECRET


def test_defaults_without_file(monkeypatch: pytest.MonkeyPatch) -> None:
    """With no file and no environment the documented defaults apply and secrets stay unset."""
    isolate(monkeypatch)
    settings = load_settings()
    assert settings.run.concurrency == 48
    assert settings.policy.allowed_statuses == ("ACTIVE",)
    assert settings.policy.reconciliation_policy is ReconciliationPolicy.PAY_SMALLER
    assert settings.investsuite.secret_access_key is None


def test_env_overrides_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """BATCH_RUN__CONCURRENCY wins over the file, and the file's other [run] keys are kept."""
    isolate(monkeypatch)
    monkeypatch.setenv("BATCH_RUN__CONCURRENCY", "7")
    settings = load_settings(write(tmp_path, CONFIG))
    assert settings.run.concurrency == 7
    assert settings.run.timezone == "Europe/Amsterdam"


def test_env_supplies_secret(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A secret can come from the environment alone (BATCH_INVESTSUITE__SECRET_ACCESS_KEY)."""
    isolate(monkeypatch)
    monkeypatch.setenv("BATCH_INVESTSUITE__SECRET_ACCESS_KEY", "from-env")
    settings = load_settings(write(tmp_path, "[run]\nconcurrency = 3\n"))
    assert settings.investsuite.secret_access_key is not None
    assert settings.investsuite.secret_access_key.get_secret_value() == "from-env"
    assert settings.run.concurrency == 3


def test_config_path_from_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without an explicit path the file named by BATCH_CONFIG is loaded."""
    isolate(monkeypatch)
    monkeypatch.setenv("BATCH_CONFIG", str(write(tmp_path, "[run]\nconcurrency = 5\n")))
    assert load_settings().run.concurrency == 5


def test_missing_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A config file that does not exist is a ConfigError naming it."""
    isolate(monkeypatch)
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match=re.escape("nope.toml")):
        load_settings(missing)


def test_broken_toml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Malformed TOML is a ConfigError naming the file."""
    isolate(monkeypatch)
    path = write(tmp_path, "[run\nconcurrency = 3\n", name="broken-config.toml")
    with pytest.raises(ConfigError, match=re.escape("broken-config.toml")) as info:
        load_settings(path)
    assert "TOML" in str(info.value)


@pytest.mark.parametrize(
    ("toml", "field"),
    [
        pytest.param("[run]\nconcurrency = 0\n", "run.concurrency", id="concurrency-zero"),
        pytest.param('[run]\ntimezone = "Mars/Olympus_Mons"\n', "run.timezone", id="unknown-time-zone"),
        pytest.param('[policy]\nmax_payout = { EUR = "-5" }\n', "policy.max_payout", id="negative-payout-cap"),
        pytest.param('[policy]\nmax_run_total = { EUR = "0" }\n', "policy.max_run_total", id="zero-run-cap"),
        pytest.param(
            '[policy]\nfour_eyes_threshold = { EUR = "0" }\n', "policy.four_eyes_threshold", id="zero-four-eyes"
        ),
        pytest.param(
            '[policy]\nreconciliation_tolerance = "-0.01"\n', "policy.reconciliation_tolerance", id="negative-tolerance"
        ),
        pytest.param(
            '[policy]\nreconciliation_policy = "yolo"\n',
            "policy.reconciliation_policy",
            id="unknown-reconciliation-policy",
        ),
        pytest.param("[run]\nworkers = 0\n", "run.workers", id="workers-zero"),
        pytest.param('[run]\nworkers = "many"\n', "run.workers", id="workers-not-auto"),
        pytest.param("[run]\nconcurency = 4\n", "run.concurency", id="unknown-key-typo"),
        pytest.param("colour = 4\n", "colour", id="unknown-top-level-key"),
        pytest.param("[investsuite]\npage_size = 101\n", "investsuite.page_size", id="page-size-above-api-max"),
        pytest.param('[investsuite]\nbase_url = "not-a-url"\n', "investsuite.base_url", id="base-url-not-a-url"),
        pytest.param('[investsuite]\nbase_url = "ftp://h/"\n', "investsuite.base_url", id="base-url-not-http"),
    ],
)
def test_invalid_value_names_the_field(toml: str, field: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An invalid or unknown setting is a ConfigError naming the field and the file."""
    isolate(monkeypatch)
    path = write(tmp_path, toml)
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    message = str(info.value)
    assert f"{field}:" in message
    assert str(path) in message


def test_invalid_env_value_names_the_field(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An invalid value from the environment is a ConfigError naming the field too."""
    isolate(monkeypatch)
    monkeypatch.setenv("BATCH_RUN__CONCURRENCY", "0")
    with pytest.raises(ConfigError, match=r"run\.concurrency"):
        load_settings(write(tmp_path, CONFIG))


def test_config_error_does_not_echo_secret(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A validation error in a file holding secrets does not print the secrets."""
    isolate(monkeypatch)
    path = write(tmp_path, CONFIG.replace("concurrency = 12", "concurrency = 0"))
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    assert SECRET not in str(info.value)
    assert DSN_PASSWORD not in str(info.value)


def test_secrets_hidden_in_repr_and_str(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Neither repr() nor str() of the settings (or a section) shows a secret or a DSN password."""
    isolate(monkeypatch)
    settings = load_settings(write(tmp_path, CONFIG))
    for text in (repr(settings), str(settings), repr(settings.investsuite), str(settings.database)):
        assert SECRET not in text
        assert DSN_PASSWORD not in text
    assert SECRET not in settings.model_dump_json()


def test_settings_are_frozen(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Loaded settings cannot be changed after the fact."""
    isolate(monkeypatch)
    settings = load_settings(write(tmp_path, CONFIG))
    with pytest.raises(ValueError, match="frozen"):
        settings.run.concurrency = 99  # type: ignore[misc]  # the very assignment mypy refuses: refused at run time too


def test_digest_is_stable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Loading the same configuration twice gives the same short digest."""
    isolate(monkeypatch)
    path = write(tmp_path, CONFIG)
    first = load_settings(path).digest()
    assert first == load_settings(path).digest()
    assert len(first) == 16
    assert all(c in "0123456789abcdef" for c in first)
    assert Settings().digest() == Settings().digest()


def test_digest_excludes_secrets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Changing only secrets (access key, DSN with password) keeps the digest; it never contains them."""
    isolate(monkeypatch)
    base = load_settings(write(tmp_path, CONFIG, "a.toml")).digest()
    rotated = CONFIG.replace(SECRET, "another-secret").replace(DSN_PASSWORD, "another-password")
    assert load_settings(write(tmp_path, rotated, "b.toml")).digest() == base
    monkeypatch.setenv("BATCH_INVESTSUITE__SECRET_ACCESS_KEY", "env-secret")
    assert load_settings(write(tmp_path, CONFIG, "c.toml")).digest() == base
    assert SECRET not in base


def test_digest_changes_with_a_setting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Changing a non-secret setting changes the digest, so reports show the config differed."""
    isolate(monkeypatch)
    base = load_settings(write(tmp_path, CONFIG, "a.toml")).digest()
    changed = load_settings(write(tmp_path, CONFIG.replace('"0.05"', '"0.06"'), "b.toml")).digest()
    assert changed != base
    monkeypatch.setenv("BATCH_RUN__CONCURRENCY", "13")
    assert load_settings(write(tmp_path, CONFIG, "c.toml")).digest() != base


def test_workers_auto_is_the_usable_cpus_capped_at_four(monkeypatch: pytest.MonkeyPatch) -> None:
    """`workers = "auto"` (the default) resolves to the CPUs the process may use, at most 4; a number is kept."""
    isolate(monkeypatch)
    monkeypatch.setattr("batch.settings.usable_cpus", lambda: 2)
    assert Settings().run.worker_processes() == 2
    monkeypatch.setattr("batch.settings.usable_cpus", lambda: 16)
    assert Settings().run.worker_processes() == 4
    monkeypatch.setenv("BATCH_RUN__WORKERS", "1")
    assert Settings().run.worker_processes() == 1


def _paths(settings: Settings) -> dict[str, Path]:
    """Every ``Path`` value of the settings, by dotted name."""
    found: dict[str, Path] = {}
    for section_name in Settings.model_fields:
        section = getattr(settings, section_name)
        for name in type(section).model_fields:
            if isinstance(value := getattr(section, name), Path):
                found[f"{section_name}.{name}"] = value
    return found


def test_file_paths_resolve_against_the_file_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Relative paths written in the TOML file are read against the file's folder, whatever the working directory."""
    isolate(monkeypatch)
    conf = tmp_path / "etc"
    conf.mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    text = '[database]\ndata_dir = "pg"\n[run]\nreport_dir = "../reports"\n[metrics]\ntextfile_path = "m/payout.prom"\n'
    settings = load_settings(write(conf, text))
    assert settings.database.data_dir == conf / "pg"
    assert settings.run.report_dir == tmp_path / "reports"
    assert settings.metrics.textfile_path == conf / "m" / "payout.prom"


def test_relative_config_path_is_read_from_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A relative --config (or $BATCH_CONFIG) names a file under the working directory; its paths follow the file."""
    isolate(monkeypatch)
    (tmp_path / "conf").mkdir()
    write(tmp_path / "conf", '[run]\nreport_dir = "out"\n')
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("BATCH_CONFIG", "conf/batch.toml")
    assert load_settings().run.report_dir == tmp_path / "conf" / "out"


def test_env_and_default_paths_resolve_against_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A path from BATCH_* and a default path are read against the working directory, even with a config file."""
    isolate(monkeypatch)
    conf = tmp_path / "etc"
    conf.mkdir()
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    monkeypatch.setenv("BATCH_RUN__REPORT_DIR", "env-reports")
    settings = load_settings(write(conf, '[run]\nreport_dir = "file-reports"\n'))
    assert settings.run.report_dir == cwd / "env-reports"
    assert settings.database.data_dir == cwd / ".data" / "pg"  # default
    assert settings.metrics.textfile_path is None


def test_no_config_file_paths_resolve_against_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without a config file every path setting is absolute under the working directory; absolute ones stay."""
    isolate(monkeypatch)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("BATCH_METRICS__TEXTFILE_PATH", "/var/lib/node_exporter/payout.prom")
    settings = load_settings()
    paths = _paths(settings)
    assert set(paths) == {"database.data_dir", "run.report_dir", "metrics.textfile_path"}
    assert paths["database.data_dir"] == tmp_path / ".data" / "pg"
    assert paths["run.report_dir"] == tmp_path / "reports"
    assert paths["metrics.textfile_path"] == Path("/var/lib/node_exporter/payout.prom")


def test_embedded_server_is_off_by_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """[database] embedded defaults to false and is read from the file and from BATCH_DATABASE__EMBEDDED."""
    isolate(monkeypatch)
    assert load_settings().database.embedded is False
    assert load_settings(write(tmp_path, "[database]\nembedded = true\n")).database.embedded is True
    monkeypatch.setenv("BATCH_DATABASE__EMBEDDED", "false")
    assert load_settings(write(tmp_path, "[database]\nembedded = true\n")).database.embedded is False
