"""What a cleaning worker holds between chunks: the config, the site boilerplate of pass 2, and the spaCy
pipelines it loaded. Set once per worker process by the processes runner (Pool initializer), and by a
Dask task when the worker has another config or boilerplate than the one it holds."""
from __future__ import annotations

from corpus.config import CleanConfig

_state: dict = {}


def start_worker(config: CleanConfig, boilerplate: frozenset[bytes] = frozenset()) -> None:
    _state.clear()
    _state.update(config=config, boilerplate=boilerplate, nlp={})


def start_dedicated_worker(config: CleanConfig) -> None:
    """A worker process that lives for one clean with one config: the processes runner's, or a worker of
    the local Dask cluster that the Dask runner started."""
    _import_spacy_without_torch(config)
    start_worker(config)


def _import_spacy_without_torch(config: CleanConfig) -> None:
    """Import spaCy without torch when no trained pipeline is configured: thinc imports torch whenever it is
    installed (about 200 MB of resident memory in each cleaning worker), and blank pipelines never use it.
    Only in a dedicated worker's fresh process: thinc then believes torch absent for the life of the
    process, which a worker of a cluster memlm did not start or memlm's own process (a later config's
    pipeline may need torch) must not."""
    import sys

    if config.spacy_model or "torch" in sys.modules or "spacy" in sys.modules:
        return
    sys.modules["torch"] = None  # `import torch` raises ImportError, which thinc takes as "not installed"
    try:
        import spacy  # noqa: F401
    finally:
        sys.modules.pop("torch", None)


def run_chunk(step, boilerplate: frozenset[bytes], chunk: list) -> list:
    """A pass's `step` over one chunk, in a worker started with the run's config, with the boilerplate of
    this pass (none in pass 1): one set of workers serves both passes."""
    _state["boilerplate"] = boilerplate
    return step(chunk)


def ensure_worker(config: CleanConfig, boilerplate: frozenset[bytes]) -> None:
    """Start this worker for (config, boilerplate) unless it holds them already (spaCy stays loaded)."""
    if _state.get("config") != config:
        start_worker(config, boilerplate)
    elif _state.get("boilerplate") != boilerplate:
        _state["boilerplate"] = boilerplate


def worker_config() -> CleanConfig:
    return _state["config"]


def worker_boilerplate() -> frozenset[bytes]:
    return _state["boilerplate"]


def worker_nlp(lang: str):
    """spaCy for `lang`: the configured trained pipeline if installed, else spacy.blank + sentencizer."""
    from corpus.filter_pass import load_nlp

    cache = _state["nlp"]
    if lang not in cache:
        cache[lang] = load_nlp(lang, _state["config"])
    return cache[lang]
