"""Settings: loaded once from a TOML file plus ``BATCH_*`` environment variables, passed explicitly.

Environment variables override the file; nested keys use ``__``
(``BATCH_INVESTSUITE__SECRET_ACCESS_KEY``, ``BATCH_DATABASE__JOURNAL_DSN``). Secrets are ``SecretStr``
and have no defaults. Nothing here connects to anything.

Relative paths are made absolute once, here: a path written in the TOML file against the file's
folder (so a config means the same from any working directory), a path from the environment or a
default against the working directory.
"""

from __future__ import annotations

import hashlib
import json
import os
import tomllib
from decimal import Decimal
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from batch.domain.model import AccountMap, AccountMapping, ReconciliationPolicy
from batch.domain.policy import Policy
from batch.errors import ConfigError

DEFAULT_CONFIG_ENV = "BATCH_CONFIG"


def usable_cpus() -> int:
    """CPUs this process may use: its affinity mask, lowered by a cgroup v2 CPU quota (containers)."""
    try:
        count = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        count = os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text(encoding="ascii").split()[:2]
        if quota != "max":
            count = min(count, max(1, -(-int(quota) // int(period))))
    except (OSError, ValueError):
        pass
    return max(count, 1)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DatabaseSettings(_Section):
    """Where the job's journal, the core banking ledger and the sandbox live.

    A DSN left empty is a configuration error, unless ``embedded`` is true: then it means a database
    on the embedded PostgreSQL server under ``data_dir`` (started on demand; demo and tests only).
    """

    journal_dsn: SecretStr | None = None
    ledger_dsn: SecretStr | None = None
    sandbox_dsn: SecretStr | None = None
    #: start the embedded PostgreSQL server for the DSNs left empty (never implicitly)
    embedded: bool = False
    data_dir: Path = Path(".data/pg")
    pool_size: int = Field(default=20, ge=1, le=500)
    #: libpq connect_timeout: a server that accepts no connection (down, paused) fails within this
    connect_timeout_seconds: int = Field(default=10, ge=1, le=300)
    #: server-side statement_timeout of the job's sessions (0 = none); a bank keeps the default
    statement_timeout_seconds: int = Field(default=600, ge=0)
    #: TCP keepalives (libpq keepalives_idle / _interval / _count): a vanished host is seen in ~1 minute
    keepalives_idle_seconds: int = Field(default=30, ge=1)
    keepalives_interval_seconds: int = Field(default=10, ge=1)
    keepalives_count: int = Field(default=3, ge=1)

    def libpq_options(self) -> dict[str, object]:
        """The connection settings above, as libpq connection parameters (for the job's engines)."""
        options: dict[str, object] = {
            "connect_timeout": self.connect_timeout_seconds,
            "keepalives": 1,
            "keepalives_idle": self.keepalives_idle_seconds,
            "keepalives_interval": self.keepalives_interval_seconds,
            "keepalives_count": self.keepalives_count,
        }
        if self.statement_timeout_seconds:
            options["options"] = f"-c statement_timeout={self.statement_timeout_seconds * 1000}"
        return options


class InvestSuiteSettings(_Section):
    base_url: str = "http://127.0.0.1:8765"
    access_key_id: str | None = None
    secret_access_key: SecretStr | None = None
    connect_timeout_seconds: float = Field(default=5.0, gt=0)
    read_timeout_seconds: float = Field(default=30.0, gt=0)
    page_size: int = Field(default=100, ge=1, le=100)
    max_attempts: int = Field(default=6, ge=1, le=50)
    max_retry_seconds: float = Field(default=120.0, gt=0)
    rate_limit_per_second: float | None = Field(default=None, gt=0)
    max_connections: int = Field(default=100, ge=1)

    @field_validator("base_url")
    @classmethod
    def _absolute_http_url(cls, value: str) -> str:
        """An absolute http(s) URL with a host: a typo is a configuration error (exit 2), not a transport error."""
        parts = urlsplit(value.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(
                f"must be an absolute http(s) URL such as https://api.sandbox.investsuite.com, not {value!r}"
            )
        return value.strip()


class PolicySettings(_Section):
    allowed_statuses: tuple[str, ...] = ("ACTIVE",)
    reconciliation_tolerance: Decimal = Field(default=Decimal("0.00"), ge=0)
    reconciliation_policy: ReconciliationPolicy = ReconciliationPolicy.PAY_SMALLER
    #: HOLD a single payout above this amount, per currency (absent = no cap).
    max_payout: dict[str, Decimal] = Field(default_factory=dict)
    #: HOLD payouts once a run's total for the currency would exceed this (absent = no cap).
    max_run_total: dict[str, Decimal] = Field(default_factory=dict)
    #: A HELD payout above this amount needs approvals from two different operators, per currency
    #: (absent = one approval). The job records it in the journal at every run; the database enforces it.
    four_eyes_threshold: dict[str, Decimal] = Field(default_factory=dict)
    account_mapping: AccountMapping = AccountMapping.EXTERNAL_ID
    #: With account_mapping = "template": e.g. "CASH-{external_id}" or "{portfolio_id}".
    account_template: str = "{external_id}"

    def to_policy(self) -> Policy:
        """The decision-relevant settings as the domain's frozen values."""
        return Policy(
            allowed_statuses=frozenset(self.allowed_statuses),
            reconciliation_tolerance=self.reconciliation_tolerance,
            reconciliation_policy=self.reconciliation_policy,
            max_payout=dict(self.max_payout),
            max_run_total=dict(self.max_run_total),
        )

    def account_map(self) -> AccountMap:
        return AccountMap(self.account_mapping, self.account_template)

    @field_validator("max_payout", "max_run_total", "four_eyes_threshold")
    @classmethod
    def _positive_caps(cls, value: dict[str, Decimal]) -> dict[str, Decimal]:
        for currency, cap in value.items():
            if cap <= 0:
                raise ValueError(f"cap for {currency} must be positive")
        return value


class LedgerSettings(_Section):
    #: Account the payouts are credited to (cash on its way to the customer's counter account).
    clearing_account_template: str = "CLEARING-{currency}"
    #: House account per currency into which the bank's payment system books customers' incoming payments.
    incoming_account_template: str = "INCOMING-{currency}"


class BrokerIntegration(StrEnum):
    """Who moves a deposit's money at the broker (the seeds' two set-ups)."""

    CLIENT = "client"  # the bank: move house -> customer account in the ledger, then announce it
    INVESTSUITE = "investsuite"  # InvestSuite: only announce it


class RefusedAfterMove(StrEnum):
    """What to do when InvestSuite refuses a deposit event for good after the money moved in the ledger."""

    REVERSE = "reverse"  # undo the move (customer -> incoming account) and hold the credit with the reason
    ATTENTION = "attention"  # leave the money moved; the operation needs attention with the true reason


class DepositSettings(_Section):
    #: run the deposit flow in ``batch run`` (``--flow`` chooses per run)
    enabled: bool = True
    broker_integration: BrokerIntegration = BrokerIntegration.CLIENT
    #: an announcement refused after the ledger move (portfolio archived, deleted, ...): see RefusedAfterMove
    refused_after_move: RefusedAfterMove = RefusedAfterMove.REVERSE


class WithdrawalSettings(_Section):
    #: who moves a withdrawal's cash: ``client`` (the job pays out of the ledger and brings InvestSuite up to
    #: date) or ``investsuite`` (InvestSuite moves the cash at the broker and updates itself; the bank's core
    #: banking pays the counter account; the job only announces each payout: ``POST /events/withdraw/``)
    broker_integration: BrokerIntegration = BrokerIntegration.CLIENT


class RunSettings(_Section):
    timezone: str = "Europe/Brussels"
    concurrency: int = Field(default=48, ge=1, le=512)
    #: processes executing payouts, the planner included, each with ``concurrency`` threads; "auto" =
    #: the CPUs this process may use (affinity and cgroup quota), at most 4. 1 = the planner alone.
    workers: int | Literal["auto"] = "auto"
    report_dir: Path = Path("reports")
    max_step_attempts: int = Field(default=8, ge=1, le=100)
    lease_seconds: int = Field(default=300, ge=5)
    #: the run's own lease (and a listener instance's): renewed every heartbeat_seconds, taken over by
    #: another run only once lease_ttl_seconds passed without a renewal (or at once when its holder died)
    lease_ttl_seconds: float = Field(default=60.0, ge=5)
    heartbeat_seconds: float = Field(default=2.0, gt=0)
    #: a journal that does not answer: a warning after this many seconds, the run stops (lease lost)
    #: after 3/4 of lease_ttl_seconds, the process exits 1 after journal_stall_abort_seconds
    journal_stall_warn_seconds: float = Field(default=5.0, gt=0)
    journal_stall_abort_seconds: float = Field(default=90.0, gt=0)
    progress_interval_seconds: float = Field(default=10.0, gt=0)
    #: a HOLD unchanged since the previous run ("still held") gives exit code 3 by itself only when true
    alert_on_unchanged_holds: bool = False

    @field_validator("workers", mode="before")
    @classmethod
    def _workers_range(cls, value: object) -> object:
        if value == "auto" or (isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 64):
            return value
        if isinstance(value, str) and value.isdigit() and 1 <= int(value) <= 64:
            return int(value)  # from the environment
        raise ValueError('must be a number of processes 1..64 or "auto"')

    def worker_processes(self) -> int:
        """``workers`` resolved: "auto" is the usable CPUs, capped at 4."""
        return min(usable_cpus(), 4) if self.workers == "auto" else int(self.workers)

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {value!r}") from exc
        return value


class ReportSettings(_Section):
    #: a bank's folder of report templates (report.html.j2, report.txt.j2) taking precedence over the shipped ones
    template_dir: Path | None = None


class ScheduleSettings(_Section):
    cron: str = "30 1 * * *"
    timezone: str = "Europe/Brussels"
    misfire_grace_seconds: int = Field(default=3600, ge=1)


class AuditSettings(_Section):
    """Where the audit chain's anchors live outside the database, and the full verification's processes.

    ``anchor_file``: an append-only JSON-lines file (``batch audit anchor --to``), ideally on write-once
    storage (a WORM volume, a mount with object lock). When set, every run checks, before any money moves,
    that the rows at every anchored seq still carry the anchored hash; the file must exist (create it with
    ``batch audit anchor --to FILE``). An object-store URL is not supported yet: mount it, or ship the file.
    """

    anchor_file: Path | None = None
    #: processes of ``batch audit verify --full`` (one checkpoint segment of the chain each)
    full_verify_processes: int = Field(default=4, ge=1, le=64)


class MetricsSettings(_Section):
    pushgateway_url: str | None = None
    job_name: str = "investsuite_payout_batch"
    textfile_path: Path | None = None
    timeout_seconds: float = Field(default=5.0, gt=0)


#: Kafka is not offered until a Kafka-protocol broker can run beside the tests (issue 24)
BusKind = Literal["rabbitmq", "mqtt", "nats"]


class BusSettings(_Section):
    """InvestSuite's outbound events on the bank's message bus (``batch listen``; one process per bus).

    One topic carries every event (DESIGN §9.7). RabbitMQ: InvestSuite publishes to ``exchange``; the
    listener consumes the durable ``queue`` bound to it. MQTT: ``topic`` with QoS 1 and a persistent
    session named ``client_id``. NATS: JetStream ``stream``
    on subject ``topic``, durable consumer ``client_id``. Poison goes to ``dead_letter`` (a queue, topic or
    subject of that name) with the reason.
    """

    kind: BusKind = "rabbitmq"
    rabbitmq_url: str = "amqp://127.0.0.1:5672/"
    mqtt_url: str = "mqtt://127.0.0.1:1883"
    nats_url: str = "nats://127.0.0.1:4222"
    username: str | None = None
    password: SecretStr | None = None
    #: TLS: on when ``tls`` is true or any file is given; ``tls_verify = false`` only for a test bus
    tls: bool = False
    tls_ca_file: Path | None = None
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    tls_verify: bool = True
    exchange: str = Field(default="investsuite.events", min_length=1, max_length=200)
    queue: str = Field(default="batch.investsuite-events", min_length=1, max_length=200)
    topic: str = Field(default="investsuite.events", min_length=1, max_length=200)
    stream: str = Field(default="INVESTSUITE_EVENTS", min_length=1, max_length=200)
    dead_letter: str = Field(default="investsuite.events.dead-letter", min_length=1, max_length=200)
    client_id: str = Field(default="batch-listener", min_length=1, max_length=100)
    #: messages the bus may hand over before they are acknowledged (RabbitMQ prefetch, NATS batch)
    prefetch: int = Field(default=64, ge=1, le=1000)
    #: events handled at once (threads); events of one portfolio are handled one after the other
    concurrency: int = Field(default=32, ge=1, le=256)
    #: attempts at handling one event that failed for a transient reason before it is dead-lettered
    max_handling_attempts: int = Field(default=5, ge=1, le=50)
    #: MQTT persistent session: how long the broker keeps it (and the QoS 1 messages) while disconnected
    mqtt_session_expiry_seconds: int = Field(default=7 * 24 * 3600, ge=0, le=4_294_967_295)
    #: a message body bigger than this is poison (events are thin signals): dead-lettered, never parsed
    max_body_bytes: int = Field(default=65536, ge=1024, le=16 * 1024 * 1024)
    #: readiness fails while the oldest unacknowledged delivery is older than this (no progress)
    stall_seconds: float = Field(default=120.0, gt=0, le=3600)
    #: liveness fails when the event loop has not turned for this long
    liveness_seconds: float = Field(default=30.0, gt=0, le=3600)
    #: on SIGTERM, how long events being handled may take to finish (the rest go back to the bus)
    stop_grace_seconds: float = Field(default=3.0, ge=0, le=60)
    #: readiness / liveness / Prometheus metrics HTTP endpoint
    health_host: str = "127.0.0.1"
    health_port: int = Field(default=9464, ge=0, le=65535)

    def url(self, kind: BusKind | None = None) -> str:
        return str(getattr(self, f"{kind or self.kind}_url"))


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="BATCH_", env_nested_delimiter="__", extra="forbid", frozen=True)

    database: DatabaseSettings = DatabaseSettings()
    investsuite: InvestSuiteSettings = InvestSuiteSettings()
    policy: PolicySettings = PolicySettings()
    ledger: LedgerSettings = LedgerSettings()
    deposits: DepositSettings = DepositSettings()
    withdrawals: WithdrawalSettings = WithdrawalSettings()
    run: RunSettings = RunSettings()
    report: ReportSettings = ReportSettings()
    schedule: ScheduleSettings = ScheduleSettings()
    metrics: MetricsSettings = MetricsSettings()
    bus: BusSettings = BusSettings()
    audit: AuditSettings = AuditSettings()

    @model_validator(mode="after")
    def _lease_outlives_a_call(self) -> Settings:
        """A payout's lease is renewed before every external call; the call (with the client's own
        bounded retries) must end before the lease can, or another worker could take the payout over
        while a write is still in flight."""
        call = (
            self.investsuite.connect_timeout_seconds
            + self.investsuite.read_timeout_seconds
            + self.investsuite.max_retry_seconds
        )
        if self.run.lease_seconds <= call:
            raise ValueError(
                f"run.lease_seconds ({self.run.lease_seconds}) must exceed the longest InvestSuite call: "
                f"connect + read timeout + max_retry_seconds = {call:g}"
            )
        run = self.run
        if not (run.heartbeat_seconds * 2 <= run.journal_stall_warn_seconds < run.lease_ttl_seconds * 0.75):
            raise ValueError(
                "run: need 2 x heartbeat_seconds <= journal_stall_warn_seconds < 3/4 of lease_ttl_seconds"
                f" (got {run.heartbeat_seconds:g}, {run.journal_stall_warn_seconds:g}, {run.lease_ttl_seconds:g})"
            )
        if run.journal_stall_abort_seconds <= run.lease_ttl_seconds * 0.75:
            raise ValueError("run.journal_stall_abort_seconds must exceed 3/4 of run.lease_ttl_seconds")
        return self

    def digest(self) -> str:
        """A short hash of the effective configuration, secrets excluded; printed in every report."""
        data = self.model_dump(mode="json")
        data["investsuite"].pop("secret_access_key", None)
        data["investsuite"].pop("access_key_id", None)
        data["bus"].pop("password", None)
        for key in ("journal_dsn", "ledger_dsn", "sandbox_dsn"):
            data["database"].pop(key, None)
        blob = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


class _TomlSource(PydanticBaseSettingsSource):
    def __init__(self, settings_cls: type[BaseSettings], data: dict[str, Any]) -> None:
        super().__init__(settings_cls)
        self._data = data

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return self._data.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(self._data)


def _path_fields() -> dict[str, tuple[str, ...]]:
    """Section -> its settings typed ``Path`` (or ``Path | None``)."""
    found: dict[str, tuple[str, ...]] = {}
    for section_name, section in Settings.model_fields.items():
        model = section.annotation
        fields = getattr(model, "model_fields", {})
        paths = tuple(name for name, field in fields.items() if field.annotation in (Path, Path | None))
        if paths:
            found[section_name] = paths
    return found


def _absolute(value: Path | str, base: Path) -> Path:
    """``value`` made absolute against ``base`` (``~`` expanded, ``..`` folded)."""
    return Path(os.path.abspath(base / Path(value).expanduser()))


def _file_paths_absolute(data: dict[str, Any], folder: Path) -> None:
    """Make the relative paths written in the TOML file absolute against its folder (in place)."""
    for section_name, names in _path_fields().items():
        section = data.get(section_name)
        if not isinstance(section, dict):
            continue
        for name in names:
            value = section.get(name)
            if isinstance(value, str) and value:
                section[name] = str(_absolute(value, folder))


def _paths_absolute(settings: Settings) -> Settings:
    """Every path still relative (from the environment, or a default) made absolute against the working directory."""
    cwd = Path.cwd()
    update: dict[str, BaseModel] = {}
    for section_name, names in _path_fields().items():
        section: BaseModel = getattr(settings, section_name)
        changed = {
            name: _absolute(value, cwd)
            for name in names
            if isinstance(value := getattr(section, name), Path) and not value.is_absolute()
        }
        if changed:
            update[section_name] = section.model_copy(update=changed)
    return settings.model_copy(update=update) if update else settings


def load_settings(path: Path | None = None) -> Settings:
    """Load the TOML file (``path``, else ``$BATCH_CONFIG``, else none) and the environment.

    Every ``Path`` setting comes back absolute: relative ones written in the file are read against
    the file's folder, those from the environment and the defaults against the working directory.
    Raises ConfigError with a readable message for a missing file, bad TOML or invalid values.
    """
    if path is None and os.environ.get(DEFAULT_CONFIG_ENV):
        path = Path(os.environ[DEFAULT_CONFIG_ENV])
    data: dict[str, Any] = {}
    if path is not None:
        try:
            with path.open("rb") as fh:
                data = tomllib.load(fh)
        except FileNotFoundError as exc:
            raise ConfigError(f"config file not found: {path}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc
        _file_paths_absolute(data, _absolute(path, Path.cwd()).parent)

    class _FileAndEnvSettings(Settings):
        @classmethod
        def settings_customise_sources(
            cls,
            settings_cls: type[BaseSettings],
            init_settings: PydanticBaseSettingsSource,
            env_settings: PydanticBaseSettingsSource,
            dotenv_settings: PydanticBaseSettingsSource,
            file_secret_settings: PydanticBaseSettingsSource,
        ) -> tuple[PydanticBaseSettingsSource, ...]:
            return (init_settings, env_settings, _TomlSource(settings_cls, data))

    try:
        loaded = _FileAndEnvSettings()
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors())
        where = f" in {path}" if path else ""
        raise ConfigError(f"invalid configuration{where}: {problems}") from None
    return _paths_absolute(Settings.model_validate(loaded.model_dump()))
