"""The deployment files: Kubernetes manifests, Dockerfile, crontab.example and the example config."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from batch.service.nightly.run import ExitCode
from batch.settings import Settings, load_settings

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "kubernetes"
MANIFESTS = sorted(K8S.glob("*.yaml"))
#: every Kubernetes manifest under deploy/, whatever the folder
ALL_MANIFESTS = sorted([*(ROOT / "deploy").rglob("*.yaml"), *(ROOT / "deploy").rglob("*.yml")])
#: the oldest Kubernetes we support, and the newest the installed kubernetes-validate ships schemas for
K8S_VERSIONS = ("1.30", ".".join(kubernetes_validate.latest_version().split(".")[:2]))
SECRET_NAMES = ("SECRET", "PASSWORD", "TOKEN", "DSN", "ACCESS_KEY")
PLACEHOLDER = "REPLACE_ME"


def _docs(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((K8S / name).read_text(encoding="utf-8")) if d is not None]


def _one(name: str, kind: str) -> dict[str, Any]:
    docs = [d for d in _docs(name) if d["kind"] == kind]
    assert len(docs) == 1
    return docs[0]


def _rules(job_spec: dict[str, Any]) -> dict[int, str]:
    """Exit code -> podFailurePolicy action for the container ``batch``."""
    mapping: dict[int, str] = {}
    for rule in job_spec["podFailurePolicy"]["rules"]:
        codes = rule.get("onExitCodes")
        if codes is None:
            continue
        assert codes["operator"] == "In"
        assert codes["containerName"] == "batch"
        for value in codes["values"]:
            assert value not in mapping, f"exit code {value} appears in two rules"
            mapping[value] = rule["action"]
    return mapping


def _disruption_rule_first(job_spec: dict[str, Any]) -> bool:
    first = job_spec["podFailurePolicy"]["rules"][0]
    disruption = [{"type": "DisruptionTarget", "status": "True"}]
    return (first["action"], first.get("onPodConditions")) == ("Ignore", disruption)


def test_manifests_exist() -> None:
    """deploy/kubernetes holds the CronJob, the indexed job, the config map and the example secret."""
    assert {p.name for p in MANIFESTS} >= {"cronjob.yaml", "indexed-job.yaml", "configmap.yaml", "secret.example.yaml"}


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_every_manifest_parses(path: Path) -> None:
    """Every YAML document parses and names an apiVersion, a kind and metadata.name."""
    docs = [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d is not None]
    assert docs
    for doc in docs:
        assert doc["apiVersion"] and doc["kind"] and doc["metadata"]["name"]


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("path", ALL_MANIFESTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_manifest_validates_strictly(path: Path, version: str) -> None:
    """Every document under deploy/ passes kubernetes-validate's strict schema (no unknown or missing field)."""
    docs = [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d is not None]
    assert docs
    for doc in docs:
        try:
            validated = kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            where = ".".join(str(p) for p in exc.path)
            pytest.fail(f"{doc['kind']}/{doc['metadata']['name']} against {version}: {where}: {exc.message}")
        assert validated == version  # the schemas of that very version were used, not an older fallback


def test_strict_validation_refuses_a_pod_condition_without_status() -> None:
    """The validator used above is strict: a podFailurePolicy condition without status and an unknown key fail."""
    cron = _one("cronjob.yaml", "CronJob")
    rules = cron["spec"]["jobTemplate"]["spec"]["podFailurePolicy"]["rules"]
    del rules[0]["onPodConditions"][0]["status"]
    with pytest.raises(kubernetes_validate.ValidationError, match="'status' is a required property"):
        kubernetes_validate.validate(cron, K8S_VERSIONS[0], strict=True)
    typo = _one("configmap.yaml", "ConfigMap") | {"dta": {}}
    with pytest.raises(kubernetes_validate.ValidationError, match="dta"):
        kubernetes_validate.validate(typo, K8S_VERSIONS[-1], strict=True)


def _check_cronjob_spec(cron: dict[str, Any]) -> dict[str, Any]:
    spec = cron["spec"]
    assert cron["apiVersion"] == "batch/v1"
    assert len(spec["schedule"].split()) == 5
    assert spec["timeZone"] == "Europe/Brussels"
    assert spec["concurrencyPolicy"] == "Forbid"
    assert spec["startingDeadlineSeconds"] > 0
    assert spec["successfulJobsHistoryLimit"] >= 1
    assert spec["failedJobsHistoryLimit"] >= 1
    job: dict[str, Any] = spec["jobTemplate"]["spec"]
    assert job["activeDeadlineSeconds"] > 0
    pod = job["template"]["spec"]
    assert pod["restartPolicy"] == "Never"  # required by podFailurePolicy
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    (container,) = pod["containers"]
    assert container["name"] == "batch"
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]
    assert "emptyDir" in volumes[mounts["/var/lib/batch"]]
    assert volumes[mounts["/etc/batch"]]["configMap"]["name"] == "investsuite-payout-batch-config"
    assert container["envFrom"] == [{"secretRef": {"name": "investsuite-payout-batch-secrets"}}]
    assert _disruption_rule_first(job)
    return job


def test_cronjob_fields_and_failure_policy() -> None:
    """The CronJob forbids overlap, runs non-root read-only, and maps exit codes 1/2/3/75 as designed."""
    cron = _one("cronjob.yaml", "CronJob")
    job = _check_cronjob_spec(cron)
    assert job["backoffLimit"] >= 1
    container = job["template"]["spec"]["containers"][0]
    assert container["args"] == ["run", "--trigger", "cron"]
    assert _rules(job) == {
        ExitCode.TECHNICAL_FAILURE: "Count",
        ExitCode.USAGE: "FailJob",
        ExitCode.ATTENTION: "FailJob",
        ExitCode.LOCKED: "FailJob",
    }


def test_indexed_job_runs_one_planner_and_workers() -> None:
    """The scale-out job is Indexed, index 0 runs the planner, others are workers; 3/75 fail only their index."""
    cron = _one("indexed-job.yaml", "CronJob")
    job = _check_cronjob_spec(cron)
    assert job["completionMode"] == "Indexed"
    assert job["completions"] == job["parallelism"] >= 2
    assert job["backoffLimitPerIndex"] >= 1  # FailIndex needs it
    assert _rules(job) == {
        ExitCode.TECHNICAL_FAILURE: "Count",
        ExitCode.USAGE: "FailJob",
        ExitCode.ATTENTION: "FailIndex",
        ExitCode.LOCKED: "FailIndex",
    }
    container = job["template"]["spec"]["containers"][0]
    assert container["command"] == ["/bin/sh", "-c"]
    script = container["args"][0]
    assert '"$JOB_COMPLETION_INDEX" = 0' in script
    assert "exec batch run --workers 1 --trigger cron" in script
    assert "exec batch worker --wait-seconds 600" in script


def test_configmap_toml_loads_with_the_real_settings_loader(tmp_path: Path) -> None:
    """The config map's batch.toml is valid TOML that load_settings accepts, with the CronJob's time zone."""
    data = _one("configmap.yaml", "ConfigMap")["data"]
    path = tmp_path / "batch.toml"
    path.write_text(data["batch.toml"], encoding="utf-8")
    settings = load_settings(path)
    cron = _one("cronjob.yaml", "CronJob")
    assert settings.run.timezone == cron["spec"]["timeZone"]
    assert str(settings.run.report_dir).startswith("/var/lib/batch")
    assert settings.investsuite.secret_access_key is None
    assert settings.database.journal_dsn is None


def test_secret_example_holds_placeholders_only() -> None:
    """Every value of the example secret is a BATCH_* env var holding an obvious placeholder."""
    secret = _one("secret.example.yaml", "Secret")
    values: dict[str, str] = secret["stringData"]
    assert set(values) >= {
        "BATCH_INVESTSUITE__ACCESS_KEY_ID",
        "BATCH_INVESTSUITE__SECRET_ACCESS_KEY",
        "BATCH_DATABASE__JOURNAL_DSN",
        "BATCH_DATABASE__LEDGER_DSN",
    }
    for key, value in values.items():
        assert key.startswith("BATCH_") and "__" in key
        assert PLACEHOLDER in value, f"{key} does not look like a placeholder"
        if key.endswith("_DSN"):
            assert re.search(r"://[^:/@]+:REPLACE_ME@[a-z0-9.-]+\.example\.internal[:/]", value), key
        # nothing that looks like a real credential: no long random-looking token
        assert not re.search(r"[A-Za-z0-9+/]{32,}", value), key
    assert "data" not in secret  # base64 would hide what the values are


def test_secret_keys_are_settings_the_job_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    """The example secret's keys are environment variables load_settings actually maps onto settings."""
    values: dict[str, str] = _one("secret.example.yaml", "Secret")["stringData"]
    monkeypatch.delenv("BATCH_CONFIG", raising=False)
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    settings = load_settings(None)
    assert settings.investsuite.secret_access_key is not None
    assert settings.investsuite.secret_access_key.get_secret_value() == values["BATCH_INVESTSUITE__SECRET_ACCESS_KEY"]
    assert settings.database.journal_dsn is not None
    assert settings.database.ledger_dsn is not None


def _dockerfile_instructions() -> list[tuple[str, str]]:
    text = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    joined = re.sub(r"\\\n", " ", text)
    out: list[tuple[str, str]] = []
    for line in joined.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        word, _, rest = stripped.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def test_dockerfile_runs_as_non_root_without_secrets() -> None:
    """The image is python:3.11-slim, installs the package, runs `batch run` as a non-root user, holds no secret."""
    instructions = _dockerfile_instructions()
    assert instructions[0] == ("FROM", "python:3.11-slim")
    runs = " ".join(rest for word, rest in instructions if word == "RUN")
    assert "pip install ." in runs
    users = [rest for word, rest in instructions if word == "USER"]
    assert users, "no USER instruction"
    assert users[-1].split(":")[0] not in ("root", "0")
    assert ("ENTRYPOINT", '["batch"]') in instructions
    assert instructions[-1] == ("CMD", '["run", "--trigger", "cron"]')
    assert not [w for w, _ in instructions if w in ("ARG",)], "build args leak into the image history"
    for word, rest in instructions:
        if word != "ENV":
            continue
        for name, _value in re.findall(r"([A-Za-z_][A-Za-z0-9_]*)=(\S*)", rest):
            assert not any(s in name.upper() for s in SECRET_NAMES), f"ENV assigns {name}"


def test_dockerignore_keeps_local_state_out() -> None:
    """The build context leaves out the venv, the embedded database, reports and env files."""
    lines = set((ROOT / ".dockerignore").read_text(encoding="utf-8").split())
    assert {".git", ".venv", ".data", "reports", ".env"} <= lines


def test_crontab_example_has_a_nightly_batch_run_and_an_audit_anchor() -> None:
    """crontab.example: a 5-field `batch run` entry, then `batch audit verify --full`, then `batch audit anchor`."""
    text = (ROOT / "crontab.example").read_text(encoding="utf-8")
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    env = dict(ln.split("=", 1) for ln in lines if re.match(r"^[A-Z_]+=", ln))
    assert env["CRON_TZ"] == env["TZ"] == "Europe/Brussels"
    assert env["BATCH_CONFIG"].endswith(".toml")
    entries = [ln for ln in lines if not re.match(r"^[A-Z_]+=", ln)]
    assert len(entries) == 3
    field_re = re.compile(r"^(\*|\d+(-\d+)?)(/\d+)?(,(\d+(-\d+)?))*$")
    limits = [(0, 59), (0, 23), (1, 31), (1, 12), (0, 7)]
    for entry in entries:
        for value, (low, high) in zip(entry.split(None, 5)[:5], limits, strict=True):
            assert field_re.match(value), value
            for number in re.findall(r"\d+", value.split("/")[0]):
                assert low <= int(number) <= high
    command, verify, anchor = (entry.split(None, 5)[5] for entry in entries)
    assert "batch audit anchor --to " in anchor
    assert "batch audit verify --full" in verify
    assert entries[0].split()[1] < entries[1].split()[1] < entries[2].split()[1], "run, then verify, then anchor"
    assert command.startswith("cd ")
    assert "batch run --trigger cron" in command
    assert "2>> /var/log/" in command and ".jsonl" in command
    assert "flock" not in command  # the run's advisory lock is the guard
    for code in ("0", "1", "2", "3", "75"):
        assert re.search(rf"^#\s+{code}\s", text, re.MULTILINE), f"exit code {code} not documented"


def test_example_config_documents_every_setting() -> None:
    """config/batch.example.toml names every setting of batch/settings.py, each with a comment above it."""
    text = (ROOT / "config" / "batch.example.toml").read_text(encoding="utf-8")
    lines = text.splitlines()
    for section_name, section in Settings.model_fields.items():
        assert f"[{section_name}]" in lines, section_name
        model = section.annotation
        assert model is not None and hasattr(model, "model_fields")
        for key in model.model_fields:
            index = next(
                (i for i, ln in enumerate(lines) if re.match(rf"^#?\s*{key}\s*=", ln)),
                None,
            )
            assert index is not None, f"{section_name}.{key} is not documented"
            assert lines[index - 1].startswith("#"), f"{section_name}.{key} has no comment"


def test_example_config_loads_and_equals_the_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    """Loading the example config gives exactly what no config gives (it documents, it does not change)."""
    for name in [n for n in os.environ if n.upper().startswith("BATCH_")]:
        monkeypatch.delenv(name)
    settings = load_settings(ROOT / "config" / "batch.example.toml")
    defaults = load_settings(None)
    assert settings.digest() == defaults.digest()
    assert settings == defaults
    assert settings.model_dump(exclude={"database", "run"}) == Settings().model_dump(exclude={"database", "run"})
