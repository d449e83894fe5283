"""The code MLflow runs to load the registered model ("models from code": this file is logged as the
model, so loading it unpickles nothing). Prompts in, generated text out; the weights (safetensors), the
model's shape (JSON) and the tokenizer (JSON) are the model's artifacts. Only MLflow imports this file."""
from __future__ import annotations

import mlflow.pyfunc
from mlflow.models import set_model


class TextGenerator(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        from tokenizers import Tokenizer

        from model.checkpoint import load_lm_files

        self.model = load_lm_files(context.artifacts["weights"], context.artifacts["model_config"], "cpu")
        self.tokenizer = Tokenizer.from_file(context.artifacts["tokenizer"])

    # No type hints on predict: MLflow would infer a signature from them and drop the logged one, whose
    # params (max_new_tokens, temperature, ...) would then be ignored at inference.
    def predict(self, context, model_input, params=None):
        from model.generate import generate_text
        from model.pyfunc import GENERATION_DEFAULTS

        options = {**GENERATION_DEFAULTS, **(params or {})}
        # MLflow hands the prompts over as a one-column DataFrame; called directly, a list.
        prompts = model_input.iloc[:, 0].tolist() if hasattr(model_input, "iloc") else list(model_input)
        return [
            generate_text(self.model, self.tokenizer, prompt, int(options["max_new_tokens"]),
                          float(options["temperature"]), int(options["top_k"]) or None,
                          float(options["top_p"]), seed=int(options["seed"]) + i)
            for i, prompt in enumerate(prompts)
        ]


set_model(TextGenerator())
