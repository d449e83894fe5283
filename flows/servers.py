"""The Prefect server and the MLflow tracking server that `memlm up` starts and `memlm down` stops.

They run detached (their own process group), with their PIDs, URLs and logs under the state folder, so
that later commands find them and `memlm down` stops exactly what `memlm up` started.

Secrets (database URLs, the servers' password) reach the servers through their environment, which only
their user can read, never through the command line, which every local user can; servers.json holds none.
Off loopback (or with servers.require_auth) both servers ask for the username and password: MLflow
through its basic-auth app, Prefect through its API auth string; memlm's own clients send them."""
from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

from flows.config import MIN_PASSWORD_LENGTH, PASSWORD_VARIABLE, MemlmConfig, redact_url

SERVERS_FILE = "servers.json"


class ServerError(RuntimeError):
    pass


@dataclass
class Server:
    name: str
    url: str  # what clients use: PREFECT_API_URL or MLFLOW_TRACKING_URI
    ui: str
    health: str
    pid: int = 0
    log: str = ""
    command: list[str] | None = None


def planned(config: MemlmConfig) -> dict[str, Server]:
    s = config.servers
    prefect = f"http://{s.host}:{s.prefect_port}"
    mlflow = f"http://{s.host}:{s.mlflow_port}"
    return {"prefect": Server("Prefect", f"{prefect}/api", prefect, f"{prefect}/api/health"),
            "mlflow": Server("MLflow", mlflow, mlflow, f"{mlflow}/health")}


def answers(url: str, timeout_s: float = 3.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def _commands(config: MemlmConfig, state: Path) -> dict[str, tuple[list[str], dict]]:
    s = config.servers
    bin_dir = Path(sys.executable).parent
    prefect_env = {"PREFECT_HOME": str((state / "prefect").resolve()), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                   "PREFECT_UI_API_URL": f"http://{s.host}:{s.prefect_port}/api"}
    if s.prefect_database_url:
        prefect_env["PREFECT_API_DATABASE_CONNECTION_URL"] = s.prefect_database_url.get_secret_value()
    backend = (s.mlflow_backend_store_uri.get_secret_value() if s.mlflow_backend_store_uri else
               os.environ.get("MLFLOW_BACKEND_STORE_URI") or config.mlflow.tracking_uri.get_secret_value())
    if backend.startswith("sqlite:///") and "?" not in backend:
        Path(backend.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    artifacts = Path(s.mlflow_artifacts_dir).resolve()
    artifacts.mkdir(parents=True, exist_ok=True)
    # MLflow's job runner (eight processes, 1.3 GiB resident here) runs GenAI scorers and prompt
    # optimisation, none of which memlm uses; the environment can turn it back on.
    mlflow_env = {"MLFLOW_BACKEND_STORE_URI": backend,
                  "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": os.environ.get("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")}
    mlflow = [str(bin_dir / "mlflow"), "server", "--host", s.host, "--port", str(s.mlflow_port),
              "--artifacts-destination", artifacts.as_uri(), "--serve-artifacts", "--workers", "1"]
    credentials = s.credentials()
    if credentials:
        username, password = credentials
        mlflow += ["--app-name", "basic-auth"]
        mlflow_env.update(MLFLOW_AUTH_CONFIG_PATH=str(_auth_config(state, s.auth_cache_seconds)), MLFLOW_AUTH_ADMIN_USERNAME=username,
                          MLFLOW_AUTH_ADMIN_PASSWORD=password,
                          # Signs the UI's CSRF tokens; a new one per start only asks browsers to log in again.
                          MLFLOW_FLASK_SERVER_SECRET_KEY=secrets.token_hex(32))
        prefect_env["PREFECT_SERVER_API_AUTH_STRING"] = f"{username}:{password}"
    return {
        "prefect": ([str(bin_dir / "prefect"), "server", "start", "--host", s.host, "--port", str(s.prefect_port)],
                    prefect_env),
        "mlflow": (mlflow, mlflow_env),
    }


def _auth_config(state: Path, cache_seconds: int) -> Path:
    """MLflow's basic-auth settings: its users in the state folder (not ./basic_auth.db of whatever folder
    the server started in), no permission for users other than the admin, checked passwords cached for
    `cache_seconds`; the admin's password comes from the environment."""
    path = state / "mlflow-auth.ini"
    path.write_text("[mlflow]\ndefault_permission = NO_PERMISSIONS\n"
                    f"database_uri = sqlite:///{(state / 'mlflow-auth.db').resolve()}\n"
                    "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
                    f"auth_cache_ttl_seconds = {cache_seconds}\n")
    return path


def check_auth(config: MemlmConfig) -> None:
    """Servers that others can reach start only with a password."""
    s = config.servers
    if s.auth_required() and s.credentials() is None:
        why = "servers.require_auth is set" if s.require_auth else f"servers.host {s.host} is not a loopback address"
        raise ServerError(f"{why}, so both servers must ask for a password, and none is configured: set "
                          f"servers.password (at least {MIN_PASSWORD_LENGTH} characters) or {PASSWORD_VARIABLE} "
                          f"in the environment (user: servers.username, {s.username!r})")


def recorded(config: MemlmConfig) -> dict[str, Server]:
    path = Path(config.servers.state_dir) / SERVERS_FILE
    if not path.exists():
        return {}
    return {key: Server(**value) for key, value in json.loads(path.read_text()).items()}


def up(config: MemlmConfig, timeout_s: float = 120.0) -> dict[str, Server]:
    """Start whichever server is not answering yet; returns both."""
    check_auth(config)
    state = Path(config.servers.state_dir)
    state.mkdir(parents=True, exist_ok=True)
    servers = {**planned(config), **recorded(config)}
    commands = _commands(config, state)
    started: list[str] = []
    for key, server in servers.items():
        if answers(server.health):
            continue
        command, extra_env = commands[key]
        log = state / f"{key}.log"
        with open(log, "ab") as out:
            proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env={**os.environ, **extra_env}, start_new_session=True)
        servers[key] = Server(**{**asdict(planned(config)[key]), "pid": proc.pid, "log": str(log), "command": command})
        started.append(key)
    _save(state, servers)
    deadline = time.monotonic() + timeout_s
    for key in started:
        server = servers[key]
        while not answers(server.health):
            if not _alive(server.pid):
                raise ServerError(f"the {server.name} server exited before answering at {server.health}; "
                                  f"its log: {server.log}")
            if time.monotonic() > deadline:
                raise ServerError(f"the {server.name} server did not answer at {server.health} within "
                                  f"{timeout_s:.0f} s; its log: {server.log}")
            time.sleep(0.5)
    return servers


def down(config: MemlmConfig, timeout_s: float = 20.0) -> list[str]:
    """Stop the servers `up` started (by process group); returns the names of those stopped."""
    state = Path(config.servers.state_dir)
    running = [server for server in recorded(config).values()
               if server.pid and _alive(server.pid) and _is_ours(server)]
    for server in running:  # both told first, so that they shut down side by side
        _signal_group(server.pid, signal.SIGTERM)
    for server in running:
        if not _gone(server.pid, timeout_s):
            _signal_group(server.pid, signal.SIGKILL)
            _gone(server.pid, 10.0)  # return only once it is gone, also on a loaded machine
    stopped = [server.name for server in running]
    (state / SERVERS_FILE).unlink(missing_ok=True)
    return stopped


def use_running_servers(config: MemlmConfig) -> dict[str, str]:
    """Point this process at the servers `memlm up` started, or at those the environment names; fail in
    seconds, naming the URL, when one of them does not answer. Returns the URLs in use."""
    in_use: dict[str, str] = {}
    servers = recorded(config)
    if servers:
        for key, variable in (("prefect", "PREFECT_API_URL"), ("mlflow", "MLFLOW_TRACKING_URI")):
            os.environ.setdefault(variable, servers[key].url)
    if credentials := config.servers.credentials():
        # What MLflow's and Prefect's clients read (and the flows this process starts inherit).
        username, password = credentials
        os.environ.setdefault("MLFLOW_TRACKING_USERNAME", username)
        os.environ.setdefault("MLFLOW_TRACKING_PASSWORD", password)
        os.environ.setdefault("PREFECT_API_AUTH_STRING", f"{username}:{password}")
    checks = [("PREFECT_API_URL", "Prefect API", "/health"), ("MLFLOW_TRACKING_URI", "MLflow tracking server", "/health")]
    for variable, what, health in checks:
        url = os.environ.get(variable, "")
        if not url.startswith(("http://", "https://")):
            continue
        if not answers(url.rstrip("/") + health):
            shown = redact_url(url)  # the variable may carry credentials
            hint = ("start it with `memlm up`" if servers else
                    f"start it (`memlm up` starts one on {shown}) or unset {variable} to work without it")
            raise ServerError(f"the {what} at {shown} did not answer; {hint}")
        in_use[variable] = url
    return in_use


def _save(state: Path, servers: dict[str, Server]) -> None:
    (state / SERVERS_FILE).write_text(json.dumps({k: asdict(v) for k, v in servers.items()}, indent=2))


def _signal_group(pid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:  # it exited since it was found alive
        pass


def _gone(pid: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while _alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _is_ours(server: Server) -> bool:
    """The PID still runs the command we started (not a recycled PID)."""
    try:
        cmdline = Path(f"/proc/{server.pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return True  # no /proc: trust the record
    return bool(server.command) and any(server.command[-1].encode() == part for part in cmdline)
