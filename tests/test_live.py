"""Live orchestration with real servers: `memlm up` starts Prefect and MLflow servers, `memlm deploy` serves
the crawl and rebuild deployments, a crawl that finds new pages triggers a rebuild through the
memlm.corpus.updated event, the registry gets a champion, and `memlm down` stops exactly what it started."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import free_port, wait_for

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[1]
CRON = "0 3 1 1 *"
MEMLM = str(Path(sys.executable).parent / "memlm")
PREFECT = str(Path(sys.executable).parent / "prefect")


@pytest.fixture(scope="module")
def live(tmp_path_factory, site):
    """Servers up, deployments served, over a copy of the test site that the test may change."""
    import shutil

    from crawlers.site_server import serve_site
    from tests.conftest import small_config

    root = tmp_path_factory.mktemp("live")
    site_dir = root / "site"
    shutil.copytree(site[0], site_dir)
    prefect_port, mlflow_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_"))}
    env.update(PREFECT_HOME=str(root / "prefect-client"), PREFECT_SERVER_ANALYTICS_ENABLED="false",
               PREFECT_RUNNER_POLL_FREQUENCY="2")
    with serve_site(site_dir) as url:
        # A schedule that shows in the UI but does not fire during the test.
        config = small_config(root, url, name="live", schedule={"crawl_cron": CRON},
                              servers={"prefect_port": prefect_port, "mlflow_port": mlflow_port,
                                       "state_dir": str(root / ".memlm"),
                                       "mlflow_artifacts_dir": str(root / "mlflow" / "artifacts")},
                              # what the rebuilds train does not matter here, only that they register
                              train={"max_steps": 10, "eval_interval": 10, "checkpoint_interval": 10})
        config_file = root / "live.yaml"
        config_file.write_text(yaml.safe_dump(config.model_dump(mode="json")))
        up = subprocess.run([MEMLM, "up", "-c", str(config_file)], env=env, capture_output=True, text=True,
                            timeout=240, cwd=root)
        assert up.returncode == 0, up.stdout + up.stderr
        servers = json.loads((root / ".memlm" / "servers.json").read_text())
        deploy_log = open(root / "deploy.log", "w")
        deploy = subprocess.Popen([MEMLM, "deploy", "-c", str(config_file)], env=env, cwd=ROOT,
                                  stdout=deploy_log, stderr=subprocess.STDOUT, start_new_session=True)
        ctx = {"root": root, "site_dir": site_dir, "config": config, "config_file": config_file, "env": env,
               "servers": servers, "deploy": deploy, "up_output": up.stdout,
               "prefect": f"http://127.0.0.1:{prefect_port}/api", "mlflow": f"http://127.0.0.1:{mlflow_port}"}
        try:
            wait_for(lambda: deployments(ctx) >= 2, 120, "the two deployments to be served")
            yield ctx
        finally:
            # SIGTERM, as a process manager stops it: a shell that starts the suite in the background
            # ignores SIGINT for all it starts, and the deploy would wait out the timeout below.
            os.killpg(deploy.pid, signal.SIGTERM)
            try:
                deploy.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(deploy.pid, signal.SIGKILL)
            deploy_log.close()
            ctx["down"] = subprocess.run([MEMLM, "down", "-c", str(config_file)], env=env, capture_output=True,
                                         text=True, timeout=60, cwd=root)


def _api(ctx, path: str, body: dict | None = None):
    import urllib.request

    request = urllib.request.Request(ctx["prefect"] + path, data=json.dumps(body or {}).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def deployments(ctx) -> int:
    return len(_api(ctx, "/deployments/filter", {"deployments": {"name": {"like_": ctx["config"].name}}}))


def flow_runs(ctx, flow_name: str | None, state: str | None = None) -> list[dict]:
    body: dict = {"sort": "EXPECTED_START_TIME_ASC"}
    if flow_name:
        body["flows"] = {"name": {"any_": [flow_name]}}
    if state:
        body["flow_runs"] = {"state": {"type": {"any_": [state]}}}
    return _api(ctx, "/flow_runs/filter", body)


def run_crawl(ctx) -> None:
    """Start the crawl deployment as a person would, and wait until that flow run completes."""
    before = len(flow_runs(ctx, "crawl", state="COMPLETED"))
    env = {**ctx["env"], "PREFECT_API_URL": ctx["prefect"]}
    started = subprocess.run([PREFECT, "deployment", "run", f"crawl/{ctx['config'].name}-crawl"], env=env,
                             capture_output=True, text=True, timeout=60)
    assert started.returncode == 0, started.stdout + started.stderr
    wait_for(lambda: len(flow_runs(ctx, "crawl", state="COMPLETED")) > before, 120, "the crawl to complete")


def registry(ctx) -> tuple[list[str], dict[str, str]]:
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=ctx["mlflow"])
    name = ctx["config"].mlflow.registered_model
    try:
        versions = sorted(v.version for v in client.search_model_versions(f"name = '{name}'"))
        aliases = {a: str(v) for a, v in client.get_registered_model(name).aliases.items()}
    except mlflow.exceptions.MlflowException:
        return [], {}
    return [str(v) for v in versions], aliases


def test_up_starts_both_servers_and_says_where(live):
    assert "Prefect: http://127.0.0.1:" in live["up_output"] and "MLflow: http://127.0.0.1:" in live["up_output"]
    assert {s["name"] for s in live["servers"].values()} == {"Prefect", "MLflow"}
    assert all(s["pid"] > 0 for s in live["servers"].values())


def test_new_pages_trigger_a_rebuild_and_the_registry_keeps_a_champion(live):
    # First crawl: everything is new, so the corpus event starts a rebuild that registers v1 as champion.
    run_crawl(live)
    wait_for(lambda: registry(live)[1].get("champion") == "1", 240, "version 1 to become champion")
    assert len(flow_runs(live, "rebuild")) == 1

    # Nothing changed: the crawl emits no event and no rebuild starts.
    run_crawl(live)
    time.sleep(8)  # a triggered rebuild's flow run exists within a few seconds of the event
    assert len(flow_runs(live, "rebuild")) == 1
    assert registry(live)[0] == ["1"]

    # A new page, linked from the index: the next crawl triggers a rebuild that registers v2.
    time.sleep(1.1)  # the site server's Last-Modified has one-second resolution
    site = live["site_dir"]
    (site / "new-page.html").write_text((site / "about.html").read_text().replace("About these docs", "A new page"))
    index = (site / "index.html").read_text()
    (site / "index.html").write_text(index.replace('<li><a href="/about.html">', '<li><a href="/new-page.html">new</a></li>'
                                                   '<li><a href="/about.html">', 1))
    crawled_at = time.monotonic()
    run_crawl(live)
    def second_version_settled():
        versions, aliases = registry(live)
        return (versions, aliases) if "2" in versions and len(aliases) == 2 else None

    versions, aliases = wait_for(second_version_settled, 180, "version 2 and an alias decision")
    assert time.monotonic() - crawled_at < 180
    assert versions == ["1", "2"] and sorted(aliases.values()) == ["1", "2"]
    assert set(aliases) == {"champion", "challenger"}
    # The aliases are set inside the rebuild; the flow run completes a moment later.
    wait_for(lambda: len(flow_runs(live, "rebuild", state="COMPLETED")) == 2, 60, "both rebuilds to complete")
    assert len(flow_runs(live, "rebuild")) == 2


def test_models_lists_versions_with_aliases(live):
    env = {**live["env"]}
    out = subprocess.run([MEMLM, "models", "-c", str(live["config_file"])], env=env, capture_output=True, text=True,
                         timeout=120, cwd=live["root"])
    assert out.returncode == 0, out.stderr
    assert "champion" in out.stdout and "models:/memlm-test@champion" in out.stdout


def chromium(url: str, screenshot: Path) -> str:
    """The page's DOM after its scripts ran (headless Debian chromium), and a screenshot of it."""
    import shutil

    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    common = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
              "--window-size=1400,900", "--virtual-time-budget=20000"]
    subprocess.run([*common, f"--screenshot={screenshot}", url], capture_output=True, timeout=120)
    dom = subprocess.run([*common, "--dump-dom", url], capture_output=True, text=True, timeout=120)
    return dom.stdout


def test_the_uis_show_the_schedule_and_the_model(live):
    shots = Path(os.environ.get("MEMLM_TEST_ARTIFACTS", ROOT / "runs" / "test-artifacts"))
    shots.mkdir(parents=True, exist_ok=True)
    prefect_ui = live["prefect"].removesuffix("/api")
    name = live["config"].name
    deployments_page = chromium(f"{prefect_ui}/deployments", shots / "prefect-deployments.png")
    assert f"{name}-crawl" in deployments_page and f"{name}-rebuild" in deployments_page
    crawl_id = _api(live, "/deployments/filter", {"deployments": {"name": {"any_": [f"{name}-crawl"]}}})[0]["id"]
    crawl_page = chromium(f"{prefect_ui}/deployments/deployment/{crawl_id}", shots / "prefect-crawl-deployment.png")
    assert CRON in crawl_page or "03:00" in crawl_page, crawl_page[-3000:]
    models_page = chromium(f"{live['mlflow']}/#/models", shots / "mlflow-models.png")
    assert live["config"].mlflow.registered_model in models_page
    assert all((shots / f).stat().st_size > 10_000 for f in
               ("prefect-deployments.png", "prefect-crawl-deployment.png", "mlflow-models.png"))


def test_down_stops_exactly_what_up_started(live):
    down = subprocess.run([MEMLM, "down", "-c", str(live["config_file"])], env=live["env"], capture_output=True,
                          text=True, timeout=60, cwd=live["root"])
    assert down.returncode == 0 and "Prefect" in down.stdout and "MLflow" in down.stdout, down.stdout + down.stderr
    for server in live["servers"].values():
        with pytest.raises(ProcessLookupError):
            os.kill(server["pid"], 0)
    assert not (live["root"] / ".memlm" / "servers.json").exists()
    # With the servers gone, a command that needs them fails in seconds and says which URL and what to do.
    env = {**live["env"], "PREFECT_API_URL": live["prefect"]}
    started = time.monotonic()
    failed = subprocess.run([MEMLM, "crawl", "-c", str(live["config_file"])], env=env, capture_output=True, text=True,
                            timeout=60, cwd=live["root"])
    assert failed.returncode == 1 and time.monotonic() - started < 30
    assert live["prefect"] in failed.stderr and "did not answer" in failed.stderr
