"""docker/ and docker-compose.yml, checked by parsing: no Docker engine runs here."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import typer
import yaml

from automl.cli import app
from automl.settings import Settings

ROOT = Path(__file__).parents[1]
COMPOSE: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES: dict[str, Any] = COMPOSE["services"]
DOCKERFILE = (ROOT / "docker" / "Dockerfile").read_text()


def automl_commands() -> dict[str, Any]:
    group = typer.main.get_command(app)
    return dict(group.commands)  # type: ignore[attr-defined]


def test_compose_has_every_role() -> None:
    assert set(SERVICES) == {"postgres", "api", "mlflow", "ray-head", "ray-worker", "runner",
                             "model-server", "prometheus"}
    for name in ("api", "ray-head", "ray-worker", "runner", "model-server"):
        assert SERVICES[name]["build"]["dockerfile"] == "docker/Dockerfile"
        assert "automl-data:/data" in SERVICES[name]["volumes"]


def test_automl_services_run_real_commands_with_real_options() -> None:
    commands = automl_commands()
    for name in ("api", "runner"):
        argv = SERVICES[name]["command"]
        command = commands[argv[0]]
        known = {opt for param in command.params for opt in getattr(param, "opts", [])}
        for flag in (a for a in argv[1:] if a.startswith("--")):
            assert flag in known, f"{name}: automl {argv[0]} has no {flag}"


def test_environment_names_real_settings() -> None:
    fields = {f"AUTOML_{name.upper()}" for name in Settings.model_fields}
    fields.add("AUTOML_CACHE_DIR")  # read by the trial engine (workers/data/digits.py)
    for name, service in SERVICES.items():
        for key in service.get("environment", {}):
            if key.startswith("AUTOML_"):
                assert key in fields, f"{name}: {key} is not a setting"
    database = SERVICES["api"]["environment"]["AUTOML_DATABASE_URL"]
    pg = SERVICES["postgres"]["environment"]
    assert f"{pg['POSTGRES_USER']}:{pg['POSTGRES_PASSWORD']}@postgres:5432/{pg['POSTGRES_DB']}" in database


def test_runner_drives_the_ray_head_and_workers_have_gpus() -> None:
    head = SERVICES["ray-head"]["command"]
    port = next(re.search(r"--port=(\d+)", a).group(1) for a in head if a.startswith("--port="))
    assert "--num-cpus=0" in head  # trials run on the GPU workers, not the head
    assert SERVICES["runner"]["environment"]["AUTOML_RAY_ADDRESS"] == f"ray-head:{port}"
    assert f"--address=ray-head:{port}" in SERVICES["ray-worker"]["command"]
    devices = SERVICES["ray-worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["capabilities"] == ["gpu"]
    assert SERVICES["api"]["depends_on"]["postgres"]["condition"] == "service_healthy"


def test_the_ray_cluster_wants_a_token() -> None:
    """Ray 2.60 runs a `ray start` cluster without authentication, and its Jobs API runs any
    code it is sent: head, workers and runner share a token the operator must set."""
    for name in ("ray-head", "ray-worker", "runner"):
        env = SERVICES[name]["environment"]
        assert env["RAY_AUTH_MODE"] == "token", name
        assert env["RAY_AUTH_TOKEN"].startswith("${RAY_AUTH_TOKEN:?"), name  # no default token
    assert SERVICES["ray-head"]["ports"] == ["127.0.0.1:8265:8265"]
    # compose interpolates `${...}` (and `$$`) only: a bare `$(` would stop `docker compose up`
    lines = (ROOT / "docker-compose.yml").read_text().splitlines()
    assert not [line for line in lines
                if re.search(r"\$(?![{$])", line.split("#")[0]) and not line.lstrip().startswith("#")]


def test_dockerfile_pins_what_pyproject_pins() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    pins = [d for d in pyproject["project"]["dependencies"] if d.startswith(("torch==", "torchvision=="))]
    assert len(pins) == 2
    for pin in pins:
        assert pin in DOCKERFILE
    assert re.search(r"^FROM python:3\.11", DOCKERFILE, re.M)
    assert 'ENTRYPOINT ["automl"]' in DOCKERFILE
    for plane in ("automl", "workers", "storage"):
        assert f"COPY {plane} ./{plane}" in DOCKERFILE


def test_every_service_restarts_and_says_whether_it_is_healthy() -> None:
    """A runner that exited and stayed down would leave new jobs queued forever."""
    for name, service in SERVICES.items():
        assert service.get("restart") == "unless-stopped", name
        assert service.get("healthcheck", {}).get("test"), name
    runner = SERVICES["runner"]
    health_file = runner["command"][runner["command"].index("--health-file") + 1]
    assert health_file in " ".join(runner["healthcheck"]["test"])


def test_jobs_sent_over_http_read_only_the_datasets_volume() -> None:
    env = SERVICES["api"]["environment"]
    roots = env["AUTOML_DATASET_ROOTS"].split(":")
    # a volume is SOURCE:TARGET[:ro], and SOURCE may hold a ${VAR:-default} with a colon
    mounted = {volume.removesuffix(":ro").rsplit(":", 1)[1] for volume in SERVICES["runner"]["volumes"]}
    assert roots == ["/datasets"] and set(roots) <= mounted
    assert SERVICES["runner"]["environment"]["AUTOML_DATASET_ROOTS"] == "/datasets"


def test_every_install_comes_from_the_lock() -> None:
    """`make run`, `make test` (so CI) and the image install exactly requirements.lock."""
    lock = {line.split("==")[0].lower(): line.split("==")[1].split()[0]
            for line in (ROOT / "requirements.lock").read_text().splitlines()
            if "==" in line and not line.startswith("#")}
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = pyproject["dependencies"] + pyproject["optional-dependencies"]["dev"]
    for requirement in wanted:
        name = re.split(r"[<>=\[ ;]", requirement)[0].lower().replace("_", "-")
        assert name in lock, f"{name} is not in requirements.lock: run `make lock`"
    assert lock["torch"] == "2.14.1" and lock["torchvision"] == "0.29.1"
    assert lock["optuna"].startswith("5.0.")
    makefile = (ROOT / "Makefile").read_text()
    assert "pip install --quiet -c $(LOCK) -e '.[dev]'" in makefile
    installs = [line for line in DOCKERFILE.splitlines() if "pip install" in line]
    assert installs and all("-c requirements.lock" in line for line in installs)
    assert "requirements.lock" in DOCKERFILE.split("RUN pip install")[0]  # copied before use


def test_jobs_are_tracked_in_the_mlflow_service() -> None:
    from mlflow.cli import server

    command = SERVICES["mlflow"]["command"]
    assert command[0] == "server"
    known = {opt for param in server.params for opt in getattr(param, "opts", [])}
    for flag in (a for a in command[1:] if a.startswith("--")):
        assert flag in known, f"mlflow server has no {flag}"
    port = command[command.index("--port") + 1]
    for name in ("api", "runner"):
        assert SERVICES[name]["environment"]["AUTOML_MLFLOW_URI"] == f"http://mlflow:{port}"
    assert f"mlflow:{port}" in command[command.index("--allowed-hosts") + 1].split(",")


def test_a_stopped_runner_has_the_time_to_hand_its_jobs_back() -> None:
    """`docker compose stop` sends SIGTERM, then SIGKILL once the grace period is over: the
    signal must reach the runner (an exec-form entrypoint under an init that forwards it) and
    its drain (its drivers stopped, their jobs handed back) must fit in the grace period."""
    from automl.jobs.runner import DRAIN_SECONDS

    runner = SERVICES["runner"]
    assert runner.get("init") is True
    assert re.search(r"^ENTRYPOINT \[", DOCKERFILE, re.MULTILINE)  # no shell between
    units = {"h": 3600, "m": 60, "s": 1}
    grace = sum(int(n) * units[unit]
                for n, unit in re.findall(r"(\d+)([hms])", runner["stop_grace_period"]))
    assert grace >= DRAIN_SECONDS + 15, runner["stop_grace_period"]


# the metrics the model server (serving.app) exposes; a histogram also as _bucket, _sum, _count
SERVER_METRICS = {"automl_requests_total": "counter", "automl_request_seconds": "histogram",
                  "automl_batch_size": "histogram", "automl_predictions_total": "counter",
                  "automl_monitor_alert": "gauge"}
PROMETHEUS = ROOT / "docker" / "prometheus"


def _exposed() -> set[str]:
    names = set()
    for name, kind in SERVER_METRICS.items():
        names.add(name)
        if kind == "histogram":
            names.update(f"{name}{suffix}" for suffix in ("_bucket", "_sum", "_count"))
    return names


def test_the_model_server_serves_on_the_shared_volume() -> None:
    server = SERVICES["model-server"]
    argv = server["command"]
    assert argv[0] == "serve-model" and argv[1].startswith("${AUTOML_MODEL:?")
    assert argv[argv.index("--host") + 1] == "0.0.0.0" and argv[argv.index("--port") + 1] == "8500"
    assert server["environment"]["AUTOML_HOME"] == "/data"  # the repository: /data/models
    assert "automl-data:/data" in server["volumes"]
    assert "8500" in " ".join(server["healthcheck"]["test"])
    commands = automl_commands()
    known = {opt for param in commands["serve-model"].params for opt in getattr(param, "opts", [])}
    for flag in (a for a in argv[2:] if a.startswith("--")):
        assert flag in known, f"automl serve-model has no {flag}"


def test_prometheus_scrapes_the_model_server_with_the_token() -> None:
    service = SERVICES["prometheus"]
    assert service["image"].startswith("prom/prometheus:")
    mounts = {v.split(":")[0]: v.split(":")[1] for v in service["volumes"]}
    config_file = next(a.split("=", 1)[1] for a in service["command"]
                       if a.startswith("--config.file="))
    assert mounts["./docker/prometheus/prometheus.yml"] == config_file
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    assert [mounts["./docker/prometheus/alerts.yml"]] == config["rule_files"]
    job = next(j for j in config["scrape_configs"] if j["job_name"] == "automl-model-server")
    port = SERVICES["model-server"]["command"][-1]
    assert job["static_configs"][0]["targets"] == [f"model-server:{port}"]
    assert job["metrics_path"] == "/metrics"
    secret = job["authorization"]["credentials_file"]
    assert job["authorization"]["type"] == "Bearer"
    assert secret == f"/run/secrets/{service['secrets'][0]}"
    assert COMPOSE["secrets"][service["secrets"][0]] == {"environment": "AUTOML_API_TOKEN"}
    assert "AUTOML_API_TOKEN" in SERVICES["model-server"]["environment"]


def test_alert_rules_are_well_formed_and_use_only_metrics_the_server_exposes() -> None:
    import shutil
    import subprocess

    rules_file = PROMETHEUS / "alerts.yml"
    if shutil.which("promtool"):
        subprocess.run(["promtool", "check", "rules", str(rules_file)], check=True)
    document = yaml.safe_load(rules_file.read_text())
    rules = [rule for group in document["groups"] for rule in group["rules"]]
    assert all(group["name"] and group["rules"] for group in document["groups"])
    units = {"s": 1, "m": 60, "h": 3600}
    used: set[str] = set()
    for rule in rules:
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule
        assert re.fullmatch(r"[A-Z][A-Za-z]+", rule["alert"]) and rule["expr"].strip()
        assert re.fullmatch(r"\d+[smh]", rule["for"]) and int(rule["for"][:-1]) * units[
            rule["for"][-1]] >= 60, rule["alert"]
        assert rule["labels"]["severity"] in {"warning", "critical"}
        assert rule["expr"].count("(") == rule["expr"].count(")"), rule["alert"]
        used.update(re.findall(r"\bautoml_[a-z_]+", rule["expr"]))
    assert used <= _exposed(), used - _exposed()
    assert {"automl_monitor_alert", "automl_request_seconds_bucket",
            "automl_requests_total", "automl_predictions_total"} <= used
    expressions = {rule["alert"]: rule["expr"] for rule in rules}
    assert "automl_monitor_alert == 1" in expressions["AutomlMonitorAlert"]
    assert "histogram_quantile(0.95" in expressions["AutomlSlowRequests"]
    assert 'up{job="automl-model-server"} == 0' in expressions["AutomlModelServerDown"]
