"""The deployments `memlm deploy` serves: a scheduled crawl, and a rebuild that the crawl's
`memlm.corpus.updated` event triggers. `prefect.yaml` at the top of the repository describes the same two
for a process work pool, with workers on other hosts."""
from __future__ import annotations

from pathlib import Path

from flows.config import MemlmConfig
from flows.stages import CORPUS_UPDATED, corpus_resource_id


def deployment_names(config: MemlmConfig) -> dict[str, str]:
    """Flow/deployment names as `prefect deployment run` takes them."""
    return {"crawl": f"crawl/{config.name}-crawl", "rebuild": f"rebuild/{config.name}-rebuild"}


def build_deployments(config: MemlmConfig, config_path: Path | None, schedule: bool = True):
    from prefect.events import DeploymentEventTrigger
    from prefect.schedules import Cron

    from flows.pipeline import crawl_flow, rebuild_flow

    parameters = {"config_path": str(Path(config_path).resolve()) if config_path else None}
    crawl = crawl_flow.to_deployment(
        name=f"{config.name}-crawl", parameters=parameters,
        schedule=Cron(config.schedule.crawl_cron, timezone=config.schedule.timezone) if schedule else None,
        description="Crawl the site; when pages were added, changed or removed, emit memlm.corpus.updated.",
        tags=["memlm", config.name])
    rebuild = rebuild_flow.to_deployment(
        name=f"{config.name}-rebuild", parameters=parameters,
        description="Clean, split, tokenize, train, evaluate and register; champion or challenger by bits per byte.",
        tags=["memlm", config.name],
        triggers=[DeploymentEventTrigger(
            name=f"{config.name}: corpus updated",
            expect={CORPUS_UPDATED},
            match={"prefect.resource.id": corpus_resource_id(config)},
            parameters=parameters,
        )])
    return crawl, rebuild


def serve_deployments(config: MemlmConfig, config_path: Path | None, schedule: bool = True) -> None:
    """Serve both deployments in this process until it is stopped."""
    from prefect import serve

    serve(*build_deployments(config, config_path, schedule), pause_on_shutdown=False, print_starting_message=False)
