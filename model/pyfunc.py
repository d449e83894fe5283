"""The trained model in the MLflow registry, logged as "models from code" (`model/served_model.py`)
with its weights (safetensors), shape and tokenizer (JSON) as artifacts: nothing in it is a pickle.

memlm itself reads a registered model back as data only (`load_registered`): it downloads those three
files and builds the model with its own code, so a registry someone else can write runs no code here."""
from __future__ import annotations

from pathlib import Path

GENERATION_DEFAULTS = {"max_new_tokens": 60, "temperature": 0.8, "top_k": 40, "top_p": 1.0, "seed": 0}
SERVED_MODEL_CODE = Path(__file__).with_name("served_model.py")
ARTIFACTS = ("weights", "model_config", "tokenizer")


def log_text_generator(checkpoint_dir: Path, tokenizer_file: Path, registered_model: str | None,
                       example_prompt: str = "The Python"):
    """Log the model to the active MLflow run (and register it); returns MLflow's ModelInfo."""
    import mlflow.pyfunc
    from mlflow.models import infer_signature

    from model.checkpoint import CONFIG_FILE, WEIGHTS_FILE

    signature = infer_signature([example_prompt], ["generated text"], params=GENERATION_DEFAULTS)
    return mlflow.pyfunc.log_model(
        name="model",
        python_model=str(SERVED_MODEL_CODE),
        artifacts={"weights": str(Path(checkpoint_dir) / WEIGHTS_FILE),
                   "model_config": str(Path(checkpoint_dir) / CONFIG_FILE), "tokenizer": str(tokenizer_file)},
        # The package, so that `mlflow models serve` elsewhere finds model.checkpoint and model.generate.
        code_paths=[str(Path(__file__).parent)],
        signature=signature,
        registered_model_name=registered_model,
        # Naming the requirements spares MLflow inferring them by loading the model (about 13 s).
        pip_requirements=_requirements(),
    )


class RegisteredModelError(ValueError):
    """A registered model memlm cannot read as data: not logged by this memlm, or its files were changed."""


def load_registered(uri: str, device: str = "cpu"):
    """(model, tokenizer) of `models:/...` or `runs:/...`, from its artifact files alone: its MLmodel's loader,
    code and any pickle in it are never run."""
    import mlflow
    import yaml
    from tokenizers import Tokenizer

    from model.checkpoint import load_lm_files

    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri))
    try:
        flavor = yaml.safe_load((local / "MLmodel").read_text())["flavors"]["python_function"]
        files = {name: local / flavor["artifacts"][name]["path"] for name in ARTIFACTS}
    except (OSError, KeyError, TypeError, yaml.YAMLError):
        raise RegisteredModelError(f"{uri} has no {', '.join(ARTIFACTS)} artifacts: it was not logged by this "
                                   "version of memlm; register it again with `memlm evaluate --force`") from None
    for path in files.values():
        if local.resolve() not in path.resolve().parents:
            raise RegisteredModelError(f"{uri}: artifact path {path} points outside the model")
    try:
        model = load_lm_files(files["weights"], files["model_config"], device)
        tokenizer = Tokenizer.from_file(str(files["tokenizer"]))
    except Exception as exc:  # tokenizers raises a plain Exception for a file it cannot read
        raise RegisteredModelError(f"{uri}: {exc}") from None
    return model, tokenizer


def _requirements() -> list[str]:
    from importlib.metadata import version

    return [f"{name}=={version(name)}" for name in
            ("torch", "tokenizers", "safetensors", "numpy", "pandas", "mlflow")]
