"""Settings of the corpus stages (the `clean:`, `split:` and `tokenize:` sections of the config)."""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class CleanConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    language: str = Field(default="en", description="spaCy language code for `spacy.blank`.")
    spacy_model: str | None = Field(
        default=None, description="A trained spaCy pipeline to use instead of the blank one, if installed."
    )
    min_words: int = Field(default=50, ge=0, description="Drop documents with fewer words.")
    min_alpha_ratio: float = Field(
        default=0.5, ge=0, le=1, description="Drop documents whose share of alphabetic tokens is lower."
    )
    min_stop_words: int = Field(default=2, ge=0, description="Drop documents with fewer stop words (not prose).")
    max_chars: int = Field(default=1_000_000, ge=1, description="Drop documents longer than this after extraction.")
    batch_size: int = Field(default=16, ge=1, description="Pages per worker chunk and spaCy `nlp.pipe` batch.")
    workers: int = Field(default=0, ge=0, description="Processes that clean pages in parallel (0: one per core).")


class SplitConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    val_fraction: float = Field(default=0.08, gt=0, lt=1, description="Share of documents for validation.")
    salt: str = Field(default="memlm", description="Mixed into the URL hash; change it to draw a new split.")


class TokenizeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    vocab_size: int = Field(default=8192, ge=260, le=65535, description="Byte-level BPE vocabulary size.")
    min_frequency: int = Field(default=2, ge=1)
