"""prefect.yaml (for work pools) describes the same two deployments that flows/deploy.py builds for
`memlm deploy`: a change to one that is not made in the other fails here."""
from __future__ import annotations

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def test_prefect_yaml_matches_the_deployments_memlm_deploy_builds():
    from flows.config import load_config
    from flows.deploy import build_deployments

    config_file = Path("configs/demo.yaml")
    built = build_deployments(load_config(ROOT / config_file), ROOT / config_file)
    written = {d["name"]: d for d in yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"]}
    assert set(written) == {d.name for d in built}
    parameters = {"config_path": str(config_file)}  # relative in prefect.yaml: workers run from their checkout
    for deployment in built:
        entry = written[deployment.name]
        assert entry["entrypoint"] == deployment.entrypoint
        assert {k: str(Path(v).relative_to(ROOT)) for k, v in deployment.parameters.items()} == entry["parameters"] \
            == parameters
        assert entry["tags"] == deployment.tags
        schedules = [(s.schedule.cron, s.schedule.timezone) for s in deployment.schedules or []]
        assert [(s["cron"], s["timezone"]) for s in entry.get("schedules", [])] == schedules
        triggers = [(sorted(t.expect), t.match.model_dump(), {k: str(Path(v).relative_to(ROOT)) for k, v in t.parameters.items()})
                    for t in deployment.triggers]
        assert [(sorted(t["expect"]), t["match"], t["parameters"]) for t in entry.get("triggers", [])] == triggers
