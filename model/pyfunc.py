"""The trained model as an MLflow pyfunc: prompts in, generated text out.

Weights (safetensors), model shape and tokenizer travel as artifacts; this class is the only code."""
from __future__ import annotations

from pathlib import Path

import mlflow.pyfunc

GENERATION_DEFAULTS = {"max_new_tokens": 60, "temperature": 0.8, "top_k": 40, "top_p": 1.0, "seed": 0}


class TextGenerator(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        from tokenizers import Tokenizer

        from model.checkpoint import load_lm

        self.model = load_lm(Path(context.artifacts["checkpoint"]), "cpu")
        self.tokenizer = Tokenizer.from_file(context.artifacts["tokenizer"])

    def predict(self, context, model_input: list[str], params: dict | None = None) -> list[str]:
        from model.generate import generate_text

        options = {**GENERATION_DEFAULTS, **(params or {})}
        return [
            generate_text(self.model, self.tokenizer, prompt, int(options["max_new_tokens"]),
                          float(options["temperature"]), int(options["top_k"]) or None,
                          float(options["top_p"]), seed=int(options["seed"]) + i)
            for i, prompt in enumerate(model_input)
        ]


def log_text_generator(checkpoint_dir: Path, tokenizer_file: Path, registered_model: str | None,
                       example_prompt: str = "The Python"):
    """Log the model to the active MLflow run (and register it); returns MLflow's ModelInfo."""
    from mlflow.models import infer_signature

    signature = infer_signature([example_prompt], ["generated text"], params=GENERATION_DEFAULTS)
    return mlflow.pyfunc.log_model(
        name="model",
        python_model=TextGenerator(),
        artifacts={"checkpoint": str(checkpoint_dir), "tokenizer": str(tokenizer_file)},
        code_paths=[str(Path(__file__).parent)],
        signature=signature,
        registered_model_name=registered_model,
        # Naming the requirements spares MLflow inferring them by loading the model (about 13 s).
        pip_requirements=_requirements(),
    )


def _requirements() -> list[str]:
    from importlib.metadata import version

    return [f"{name}=={version(name)}" for name in
            ("torch", "tokenizers", "safetensors", "numpy", "pandas", "mlflow")]
