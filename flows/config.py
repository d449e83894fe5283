"""The memlm configuration: one YAML file, validated by pydantic, every field with an offline default."""
from __future__ import annotations

import ipaddress
import os
import re
from pathlib import Path
from typing import Annotated

import yaml
from pydantic import BaseModel, ConfigDict, Field, PlainSerializer, SecretStr, ValidationError, field_validator

from corpus.config import CleanConfig, SplitConfig, TokenizeConfig
from crawlers.config import CrawlConfig
from model.config import EvalConfig, ModelConfig, TrainConfig

DEFAULT_TRACKING_URI = "sqlite:///mlflow/mlflow.db"
REDACTED = "***"
CREDENTIAL_WORDS = ("pass", "secret", "token", "key", "auth")


def redact_url(url: str) -> str:
    """The URL with its credentials shown as ***: the password of user:password@, and query values whose
    name says credential (libpq and SQLite URLs may carry ?password=)."""
    url = re.sub(r"^([^:/?#]+://[^:/@?#]*):[^@/?#]*@", rf"\1:{REDACTED}@", url)
    return re.sub(rf"([?&][^=&#]*(?:{'|'.join(CREDENTIAL_WORDS)})[^=&#]*=)[^&#]*", rf"\1{REDACTED}", url,
                  flags=re.IGNORECASE)


class SecretUrl(SecretStr):
    """A URL that may hold credentials: printed, logged and serialized with them as *** (redact_url);
    get_secret_value() gives the URL itself, for the one place that connects with it."""

    def _display(self) -> str:
        return redact_url(self.get_secret_value())


# In every JSON dump (MLflow params, config.json, Prefect flow-run parameters): *** for the secret.
Secret = Annotated[SecretStr, PlainSerializer(lambda v: REDACTED, return_type=str, when_used="json")]
SecretUrlStr = Annotated[SecretUrl, PlainSerializer(lambda v: v._display(), return_type=str, when_used="json")]


class MlflowConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tracking_uri: SecretUrlStr = Field(
        default=SecretUrl(DEFAULT_TRACKING_URI),
        description="MLflow store; the MLFLOW_TRACKING_URI variable overrides it. Credentials in it show as ***.")
    experiment: str = "memlm"
    registered_model: str = Field(default="memlm-demo", description="Model registry name for trained models.")
    ui_url: str = Field(default="http://127.0.0.1:5000", description="Where `memlm ui` serves MLflow (for links).")

    def resolved_tracking_uri(self) -> str:
        """The store to connect to, credentials included: never print it, print shown_tracking_uri()."""
        return os.environ.get("MLFLOW_TRACKING_URI") or self.tracking_uri.get_secret_value()

    def shown_tracking_uri(self) -> str:
        return redact_url(self.resolved_tracking_uri())


class ServersConfig(BaseModel):
    """The Prefect and MLflow servers of `memlm up`; SQLite by default, Postgres for teams that outgrow it."""

    model_config = ConfigDict(extra="forbid")

    host: str = Field(default="127.0.0.1", description="Where both servers listen; other hosts are not reached by default.")
    prefect_port: int = Field(default=4200, ge=1, le=65535)
    mlflow_port: int = Field(default=5000, ge=1, le=65535)
    state_dir: Path = Field(default=Path(".memlm"), description="PIDs, logs and the Prefect database (SQLite).")
    prefect_database_url: SecretUrlStr | None = Field(
        default=None, description="e.g. postgresql+asyncpg://user:password@host:5432/prefect; "
        "PREFECT_API_DATABASE_CONNECTION_URL in the environment works too. Given to the server through its "
        "environment; shown as ***.")
    mlflow_backend_store_uri: SecretUrlStr | None = Field(
        default=None, description="e.g. postgresql://user:password@host:5432/mlflow; MLFLOW_BACKEND_STORE_URI in "
        "the environment works too; default: mlflow.tracking_uri. Given to the server through its environment.")
    mlflow_artifacts_dir: Path = Field(default=Path("mlflow/artifacts"), description="Artifacts the MLflow server serves.")
    require_auth: bool = Field(
        default=False, description="Ask for username and password on a loopback host too (always asked on any "
        "other host: `memlm up` refuses to start without them).")
    username: str = Field(default="admin", min_length=1, description="The servers' user: MLflow's admin, Prefect's "
                          "auth string user.")
    password: Secret | None = Field(
        default=None, description="The servers' password (at least 12 characters, MLflow's rule); "
        "MEMLM_SERVERS_PASSWORD in the environment works too and keeps it out of the config file.")
    auth_cache_seconds: int = Field(
        default=60, ge=0, description="How long MLflow trusts a checked password before hashing it again (0: "
        "every request). Each check costs about 0.2 s of server CPU by design, and a run sends hundreds of "
        "requests; a password changed outside MLflow's API is refused only once this time has passed.")

    def auth_required(self) -> bool:
        return self.require_auth or not is_loopback(self.host)

    def credentials(self) -> tuple[str, str] | None:
        """(username, password) when configured (the config's password, else MEMLM_SERVERS_PASSWORD)."""
        password = self.password.get_secret_value() if self.password else os.environ.get(PASSWORD_VARIABLE)
        return (self.username, password) if password else None

    @field_validator("password")
    @classmethod
    def _long_enough(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < MIN_PASSWORD_LENGTH:
            raise ValueError(f"must be at least {MIN_PASSWORD_LENGTH} characters (MLflow's rule for its admin)")
        return value


PASSWORD_VARIABLE = "MEMLM_SERVERS_PASSWORD"
MIN_PASSWORD_LENGTH = 12


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class ScheduleConfig(BaseModel):
    """When `memlm deploy` crawls; editable afterwards in the Prefect UI."""

    model_config = ConfigDict(extra="forbid")

    crawl_cron: str = Field(default="0 3 * * *", description="Cron schedule of the crawl deployment.")
    timezone: str = "UTC"


SECRET_FIELDS = {"tracking_uri", "prefect_database_url", "mlflow_backend_store_uri", "password"}  # never echoed


class MemlmConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(default="demo", description="Names this pipeline in Prefect and MLflow.")
    run_dir: Path = Field(default=Path("runs/demo"), description="Where stage outputs go.")
    crawl: CrawlConfig = Field(default_factory=CrawlConfig)
    clean: CleanConfig = Field(default_factory=CleanConfig)
    split: SplitConfig = Field(default_factory=SplitConfig)
    tokenize: TokenizeConfig = Field(default_factory=TokenizeConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    evaluate: EvalConfig = Field(default_factory=EvalConfig)
    mlflow: MlflowConfig = Field(default_factory=MlflowConfig)
    servers: ServersConfig = Field(default_factory=ServersConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)


class ConfigError(ValueError):
    """A config that cannot be used; the message is one line naming the field and what is allowed."""


def _describe(error: dict, model: type[BaseModel] = MemlmConfig) -> str:
    where = ".".join(str(p) for p in error["loc"]) or "(top level)"
    if error["type"] == "extra_forbidden":
        allowed = _allowed_fields(error["loc"][:-1], model)
        return f"{where}: unknown field; allowed here: {', '.join(allowed)}"
    given = error.get("input")
    secret = error["loc"] and error["loc"][-1] in SECRET_FIELDS
    shown = "" if isinstance(given, dict) or secret else f" (got {given!r})"
    return f"{where}: {error['msg']}{shown}"


def _allowed_fields(loc: tuple, model: type[BaseModel]) -> list[str]:
    for part in loc:
        annotation = model.model_fields[part].annotation if part in model.model_fields else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        model = annotation
    return sorted(model.model_fields)


def parse_config(data: dict, source: str = "config") -> MemlmConfig:
    try:
        return MemlmConfig.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        more = len(exc.errors()) - 1
        suffix = f" (and {more} more problem{'s' if more > 1 else ''})" if more else ""
        raise ConfigError(f"{source}: {_describe(first)}{suffix}") from None


def load_config(path: str | Path | None) -> MemlmConfig:
    """Read and validate a YAML config; None gives the defaults."""
    if path is None:
        return MemlmConfig()
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}: not valid YAML{at}: {getattr(exc, 'problem', exc)}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of sections (crawl:, train:, ...) at the top level")
    return parse_config(data, str(path))
