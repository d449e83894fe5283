"""Settings of the corpus stages (the `clean:`, `split:` and `tokenize:` sections of the config)."""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


def _section(cls):
    return Field(default_factory=cls, description=(cls.__doc__ or "").strip().splitlines()[0])


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LanguageConfig(Strict):
    """Which languages to keep: each page's from its <html lang> and a language identifier (py3langid)."""

    keep: list[str] = Field(default_factory=lambda: ["en"],
                            description="ISO 639-1 codes of the languages to keep; empty keeps every language.")
    detect: bool = Field(default=True, description="Identify the language from the text (else trust <html lang>).")
    min_chars_to_detect: int = Field(
        default=200, ge=1, description="Shorter prose is not identified: <html lang> (or the first kept language) rules.")


class BoilerplateConfig(Strict):
    """Site boilerplate: lines that repeat across a large share of one site's pages are removed."""

    enabled: bool = True
    min_share: float = Field(default=0.3, gt=0, le=1, description="Remove lines found on at least this share of the site's pages.")
    min_pages: int = Field(default=5, ge=2, description="Sites with fewer pages are left alone.")
    max_counts_in_memory: int = Field(
        default=2_000_000, ge=1, description="Line counts held in memory (12 bytes each); past "
        "this they are added into an SQLite table on disk.")


class C4LinesConfig(Strict):
    """C4-style line filters (lines removed, or the page dropped); documentation-friendly defaults."""

    enabled: bool = True
    drop_javascript_notices: bool = Field(default=True, description="Lines asking to enable JavaScript.")
    drop_policy_lines: bool = Field(default=True, description="Lines about cookies, privacy policies, terms of use.")
    drop_lorem_ipsum: bool = Field(default=True, description="Drop the page if it holds 'lorem ipsum'.")
    min_words_per_line: int = Field(default=0, ge=0, description="C4 uses 3; 0 keeps headings and list items.")
    require_terminal_punctuation: bool = Field(default=False, description="C4 keeps only lines that end a sentence.")
    drop_curly_braces: bool = Field(default=False, description="C4 drops pages with '{'; documentation needs them.")
    max_word_chars: int = Field(default=1000, ge=1, description="Lines with a longer 'word' are removed.")


class GopherQualityConfig(Strict):
    """Gopher quality filter (Rae et al. 2021) on the page's prose; code blocks are not judged."""

    enabled: bool = True
    min_words: int = Field(default=50, ge=0)
    max_words: int = Field(default=100_000, ge=1)
    min_mean_word_length: float | None = Field(default=3.0, description="None: not checked (Chinese, Japanese).")
    max_mean_word_length: float | None = 10.0
    max_symbol_word_ratio: float = Field(default=0.1, ge=0, description="'#', '...' and '…' per word.")
    max_bullet_line_share: float = Field(default=0.9, ge=0, le=1)
    max_ellipsis_line_share: float = Field(default=0.3, ge=0, le=1)
    min_alpha_word_share: float = Field(default=0.7, ge=0, le=1, description="Share of words with a letter (Gopher: 0.8).")
    min_stop_words: int = Field(default=2, ge=0, description="Stop words of the page's language (spaCy's lists).")


class GopherRepetitionConfig(Strict):
    """Gopher repetition filter: duplicated lines and paragraphs, top and duplicated n-grams."""

    enabled: bool = True
    max_dup_line_share: float = 0.3
    max_dup_paragraph_share: float = 0.3
    max_dup_line_char_share: float = 0.2
    max_dup_paragraph_char_share: float = 0.2
    max_top_ngram_char_share: dict[int, float] = Field(default_factory=lambda: {2: 0.2, 3: 0.18, 4: 0.16})
    max_dup_ngram_char_share: dict[int, float] = Field(
        default_factory=lambda: {5: 0.35, 6: 0.33, 7: 0.31, 8: 0.29, 9: 0.27, 10: 0.25},
        description="Gopher uses 0.15 down to 0.10, which drops a fifth of the Python documentation: API "
        "pages repeat signatures and 'Changed in version' notes. These defaults sit at its 99th percentile.")


class FineWebQualityConfig(Strict):
    """FineWeb quality filter on prose lines: lines that end a sentence, short lines, duplicated characters."""

    enabled: bool = True
    min_line_punct_share: float = Field(default=0.12, ge=0, le=1)
    max_short_line_share: float = Field(default=0.67, ge=0, le=1)
    short_line_chars: int = Field(default=30, ge=1)
    max_char_dup_share: float = Field(default=0.1, ge=0, le=1, description="FineWeb uses 0.01 on web text.")
    max_newline_per_word: float = Field(default=0.3, ge=0)


class PIIConfig(Strict):
    """Personal data and secrets replaced by placeholders (<EMAIL>, <IP>, <PHONE>, <CARD>, <SECRET>)."""

    enabled: bool = True
    emails: bool = True
    ips: bool = True
    public_ips_only: bool = Field(default=True, description="Private, loopback and documentation addresses stay.")
    phones: bool = True
    cards: bool = Field(default=True, description="13-19 digit numbers that pass the Luhn check.")
    secrets: bool = Field(default=True, description="Key-like tokens: cloud keys, private keys, 'api_key = ...'.")


class NearDedupConfig(Strict):
    """Near-duplicate pages removed with MinHash LSH before the split."""

    enabled: bool = True
    threshold: float = Field(default=0.8, gt=0, lt=1, description="Estimated Jaccard similarity of word shingles.")
    num_perm: int = Field(default=128, ge=16)
    shingle_words: int = Field(default=5, ge=1, description="Words per shingle (characters for Chinese/Japanese).")


# Word statistics do not carry over to scripts without spaces: a "word" there is one character, so
# counts are in characters and an n-gram of words becomes one of about twice as many characters.
CJK_OVERRIDES = {"gopher_quality": {"min_mean_word_length": None, "max_mean_word_length": None, "min_words": 100,
                                    "min_alpha_word_share": 0.5},
                 "gopher_repetition": {"max_top_ngram_char_share": {4: 0.2, 6: 0.18, 8: 0.16},
                                       "max_dup_ngram_char_share": {10: 0.35, 12: 0.33, 14: 0.31, 16: 0.29,
                                                                    18: 0.27, 20: 0.25}},
                 "fineweb_quality": {"short_line_chars": 12},
                 "near_dedup": {"shingle_words": 10}}


class CleanConfig(Strict):
    languages: LanguageConfig = _section(LanguageConfig)
    boilerplate: BoilerplateConfig = _section(BoilerplateConfig)
    c4_lines: C4LinesConfig = _section(C4LinesConfig)
    pii: PIIConfig = _section(PIIConfig)
    gopher_quality: GopherQualityConfig = _section(GopherQualityConfig)
    gopher_repetition: GopherRepetitionConfig = _section(GopherRepetitionConfig)
    fineweb_quality: FineWebQualityConfig = _section(FineWebQualityConfig)
    near_dedup: NearDedupConfig = _section(NearDedupConfig)
    language_overrides: dict[str, dict] = Field(
        default_factory=lambda: {"zh": CJK_OVERRIDES, "ja": CJK_OVERRIDES},
        description="Per language, sections above with fields that replace the defaults for its pages.")
    spacy_model: str | None = Field(
        default=None, description="A trained spaCy pipeline for the first kept language, used if installed.")
    max_chars: int = Field(default=1_000_000, ge=1, description="Drop documents longer than this after extraction.")
    batch_size: int = Field(default=16, ge=1, description="Pages per worker chunk and spaCy `nlp.pipe` batch.")
    workers: int = Field(default=0, ge=0, description="Processes that clean pages in parallel (0: one per core); "
                         "with runner dask and no dask_address, the local cluster's workers.")
    runner: Literal["processes", "dask"] = Field(
        default="processes", description="Where the passes run: worker processes on this machine, or a Dask "
        "cluster through Prefect's Dask task runner.")
    dask_address: str | None = Field(
        default=None, description="Scheduler of an existing Dask cluster (tcp://host:8786) for runner dask; "
        "none starts a local cluster of `workers` processes.")
    shard_pages: int = Field(
        default=0, ge=0, description="Pages per Dask task (runner dask); 0: guided, small tasks first (one per "
        "worker) and last, in between up to 1/(2 x workers) of the pages left (a Prefect task run costs about "
        "0.16 s of CPU, 0.1 of it in its worker, so a few large tasks beat many small ones; small first ones start "
        "every worker at once, small last ones end the pass together).")
    shard_chars: int = Field(default=8_000_000, ge=1, description="Most characters of HTML (pass 1) or text "
                             "(pass 2) in one Dask task: what the parent, the scheduler and a worker hold of one task.")

    @model_validator(mode="after")
    def _overrides_are_valid(self) -> "CleanConfig":
        for lang in self.language_overrides:
            self.for_language(lang)
        return self

    def for_language(self, lang: str) -> "CleanConfig":
        """This config with `language_overrides[lang]` merged in."""
        override = self.language_overrides.get(lang)
        if not override:
            return self
        data = self.model_dump()
        for section, fields in override.items():
            if section not in data or not isinstance(data[section], dict):
                raise ValueError(f"clean.language_overrides.{lang}: {section!r} is not a section of clean")
            data[section].update(fields)
        data["language_overrides"] = {}
        return CleanConfig.model_validate(data)


class SplitConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    val_fraction: float = Field(default=0.08, gt=0, lt=1, description="Share of documents for validation.")
    salt: str = Field(default="memlm", description="Mixed into the URL hash; change it to draw a new split.")
    unit: Literal["auto", "page", "section"] = Field(
        default="auto", description="What is assigned to a side: whole pages, or sections (a page's text under one "
        "heading, keyed by the page's URL and its heading path). auto: sections when the pages are too few.")
    min_val_pages: int = Field(
        default=4, ge=1, description="auto splits by page when documents × val_fraction reaches this, else by section.")


class TokenizeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    vocab_size: int = Field(default=8192, ge=260, le=65535, description="Byte-level BPE vocabulary size.")
    min_frequency: int = Field(default=2, ge=1)
