"""Secrets stay secret and servers off loopback let no one in: passwords planted in every field that can
hold one are found nowhere memlm writes or shows, and both servers refuse requests without credentials."""
from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from flows.config import ConfigError, MemlmConfig, parse_config, redact_url

MEMLM = str(Path(sys.executable).parent / "memlm")


def test_credentials_in_urls_show_as_stars():
    assert redact_url("postgresql://bob:hunter2@db:5432/mlflow") == "postgresql://bob:***@db:5432/mlflow"
    assert redact_url("sqlite:///file:/x.db?uri=true&password=hunter2") == "sqlite:///file:/x.db?uri=true&password=***"
    assert redact_url("http://h:5000/?api_key=k&x=1") == "http://h:5000/?api_key=***&x=1"
    assert redact_url("sqlite:///mlflow/mlflow.db") == "sqlite:///mlflow/mlflow.db"


def test_every_dump_of_the_config_redacts_its_secrets(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # mlflow.set_tracking_uri sets it for the process
    config = MemlmConfig.model_validate({
        "mlflow": {"tracking_uri": "http://memlm:tracking-secret@h:5000"},
        "servers": {"prefect_database_url": "postgresql+asyncpg://u:prefect-secret@db/prefect",
                    "mlflow_backend_store_uri": "postgresql://u:mlflow-secret@db/mlflow",
                    "password": "servers-secret-1"}})
    shown = [json.dumps(config.model_dump(mode="json")), str(config), repr(config)]
    for text in shown:
        assert not any(word in text for word in ("tracking-secret", "prefect-secret", "mlflow-secret", "servers-secret"))
    dumped = config.model_dump(mode="json")
    assert dumped["servers"]["password"] == "***"
    assert dumped["servers"]["mlflow_backend_store_uri"] == "postgresql://u:***@db/mlflow"
    assert config.servers.credentials() == ("admin", "servers-secret-1")
    assert config.mlflow.resolved_tracking_uri() == "http://memlm:tracking-secret@h:5000"


def test_a_bad_secret_is_not_echoed_in_the_error():
    with pytest.raises(ConfigError, match="servers.password: .*at least 12 characters") as caught:
        parse_config({"servers": {"password": "tiny-secret"}})
    assert "tiny-secret" not in str(caught.value)


def test_up_off_loopback_refuses_without_a_password(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"servers": {"host": "0.0.0.0", "state_dir": str(tmp_path / "state")}}))
    env = {k: v for k, v in os.environ.items() if k != "MEMLM_SERVERS_PASSWORD"}
    out = subprocess.run([MEMLM, "up", "-c", str(config)], capture_output=True, text=True, env=env, timeout=60,
                         cwd=tmp_path)
    assert out.returncode == 1
    assert "servers.host 0.0.0.0 is not a loopback address" in out.stderr and "servers.password" in out.stderr
    assert not (tmp_path / "state" / "servers.json").exists()


PASSWORDS = {"servers": "planted-servers-pw-4e1f", "prefect_db": "planted-prefect-db-pw-7c2a",
             "mlflow_db": "planted-mlflow-db-pw-9b3d", "tracking": "planted-tracking-pw-1a5e"}


@pytest.fixture(scope="module")
def guarded(tmp_path_factory, site_url):
    """`memlm up` with every secret field holding a password and authentication forced on 127.0.0.1."""
    from tests.conftest import free_port, small_config

    root = tmp_path_factory.mktemp("secrets")
    prefect_port, mlflow_port = free_port(), free_port()
    # Few steps and log lines: each MLflow request checks the password's hash, and only where secrets go
    # matters here.
    config = small_config(root, site_url, name="guarded", servers={
        "prefect_port": prefect_port, "mlflow_port": mlflow_port, "state_dir": str(root / ".memlm"),
        "mlflow_artifacts_dir": str(root / "mlflow" / "artifacts"), "require_auth": True},
        train={"max_steps": 10, "eval_interval": 10, "checkpoint_interval": 10, "log_interval": 10})
    data = config.model_dump(mode="json")
    # SQLite ignores URI parameters it does not know: a password in each URL that the servers really use.
    data["servers"].update(
        password=PASSWORDS["servers"],
        prefect_database_url=f"sqlite+aiosqlite:///file:{root}/prefect.db?uri=true&password={PASSWORDS['prefect_db']}",
        mlflow_backend_store_uri=f"sqlite:///file:{root}/mlflow.db?uri=true&password={PASSWORDS['mlflow_db']}")
    data["mlflow"]["tracking_uri"] = f"http://memlm:{PASSWORDS['tracking']}@127.0.0.1:{mlflow_port}"
    config_file = root / "guarded.yaml"
    config_file.write_text(yaml.safe_dump(data))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_", "MEMLM_"))}
    env.update(PREFECT_HOME=str(root / "prefect-client"), PREFECT_SERVER_ANALYTICS_ENABLED="false")
    up = subprocess.run([MEMLM, "up", "-c", str(config_file)], env=env, capture_output=True, text=True,
                        timeout=240, cwd=root)
    assert up.returncode == 0, up.stdout + up.stderr
    ctx = {"root": root, "config_file": config_file, "env": env, "outputs": [up.stdout + up.stderr],
           "prefect": f"http://127.0.0.1:{prefect_port}/api", "mlflow": f"http://127.0.0.1:{mlflow_port}",
           "processes": [_process_list()]}
    try:
        yield ctx
    finally:
        subprocess.run([MEMLM, "down", "-c", str(config_file)], env=env, capture_output=True, timeout=60, cwd=root)


def _process_list() -> str:
    return subprocess.run(["ps", "-eww", "-o", "args"], capture_output=True, text=True).stdout


def _status(url: str, body: dict | None = None, auth: bool = False) -> int:
    headers = {"Content-Type": "application/json"}
    if auth:
        token = base64.b64encode(f"admin:{PASSWORDS['servers']}".encode()).decode()
        headers["Authorization"] = f"Basic {token}"
    request = urllib.request.Request(url, data=json.dumps(body).encode() if body is not None else None,
                                     headers=headers, method="POST" if body is not None else "GET")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:  # MLflow hashes the password: slow when loaded
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


@pytest.mark.integration
def test_both_servers_refuse_requests_without_credentials(guarded):
    prefect_flows = guarded["prefect"] + "/flows/filter"
    mlflow_experiments = guarded["mlflow"] + "/api/2.0/mlflow/experiments/search?max_results=1"
    assert _status(prefect_flows, {}) == 401 and _status(prefect_flows, {}, auth=True) == 200
    assert _status(mlflow_experiments) == 401 and _status(mlflow_experiments, auth=True) == 200
    # Health stays open, so that `memlm up` and monitors can tell a server is alive.
    assert _status(guarded["prefect"] + "/health") == 200 and _status(guarded["mlflow"] + "/health") == 200


@pytest.mark.integration
def test_planted_passwords_are_nowhere_after_a_run(guarded):
    env = guarded["env"]
    run = subprocess.Popen([MEMLM, "run", "-c", str(guarded["config_file"])], env=env, cwd=guarded["root"],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    while run.poll() is None:
        guarded["processes"].append(_process_list())
        time.sleep(2)
    output = run.stdout.read()
    assert run.returncode == 0, output[-3000:]
    guarded["outputs"].append(output)

    import mlflow

    os.environ.update(MLFLOW_TRACKING_USERNAME="admin", MLFLOW_TRACKING_PASSWORD=PASSWORDS["servers"])
    try:
        client = mlflow.MlflowClient(tracking_uri=guarded["mlflow"])
        runs = client.search_runs([client.get_experiment_by_name("memlm").experiment_id])
        params = runs[0].data.params
    finally:
        for variable in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
            os.environ.pop(variable)
    assert params["servers.password"] == "***"
    assert params["servers.mlflow_backend_store_uri"].endswith("password=***")
    assert params["mlflow.tracking_uri"] == f"http://memlm:***@127.0.0.1:{guarded['mlflow'].rsplit(':', 1)[1]}"

    token = base64.b64encode(f"admin:{PASSWORDS['servers']}".encode()).decode()
    request = urllib.request.Request(guarded["prefect"] + "/flow_runs/filter", data=b"{}", method="POST", headers={
        "Content-Type": "application/json", "Authorization": f"Basic {token}"})
    with urllib.request.urlopen(request, timeout=60) as response:
        flow_runs = json.loads(response.read())
    assert flow_runs and flow_runs[0]["parameters"]["config"]["servers"]["password"] == "***"

    places = {"the Prefect API's flow-run parameters": json.dumps(flow_runs), "MLflow params": json.dumps(params),
              "the process list": "\n".join(guarded["processes"]), "memlm's output": "\n".join(guarded["outputs"])}
    for path in guarded["root"].rglob("*"):
        if path.is_file() and path != guarded["config_file"]:
            places[str(path)] = path.read_bytes().decode("latin-1")
    assert any(p.endswith("servers.json") for p in places) and any(p.endswith("mlflow.db") for p in places)
    leaks = [f"{name} in {place}" for place, text in places.items() for name, pw in PASSWORDS.items() if pw in text]
    assert not leaks, leaks


def test_a_server_that_does_not_answer_is_named_without_its_credentials(tmp_path, monkeypatch):
    from flows.config import MemlmConfig
    from flows.servers import ServerError, use_running_servers

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://memlm:{PASSWORDS['tracking']}@127.0.0.1:{port}")
    config = MemlmConfig.model_validate({"servers": {"state_dir": str(tmp_path / "state")}})
    with pytest.raises(ServerError) as failure:
        use_running_servers(config)
    assert PASSWORDS["tracking"] not in str(failure.value) and f"127.0.0.1:{port}" in str(failure.value)
