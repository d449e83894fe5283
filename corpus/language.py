"""Which language a page is in: its <html lang> and py3langid (whose model ships in its wheel)."""
from __future__ import annotations

from functools import lru_cache

from corpus.config import LanguageConfig

# py3langid's normalized probability over its 97 languages; Chinese prose mixed with Latin names
# scores about 0.75-0.85, so a clear majority rather than near-certainty decides.
MIN_PROBABILITY = 0.5


@lru_cache(maxsize=1)
def _identifier():
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    return LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)


def identify(text: str) -> tuple[str, float]:
    """(ISO 639-1 code, probability) of `text`."""
    lang, prob = _identifier().classify(text[:5000])
    return lang, float(prob)


def page_language(declared: str | None, prose: str, cfg: LanguageConfig) -> tuple[str, str]:
    """(language, how it was decided). The identifier outranks <html lang> on enough text, since
    templates often declare one language for pages in another."""
    if cfg.detect and len(prose) >= cfg.min_chars_to_detect:
        lang, prob = identify(prose)
        if prob >= MIN_PROBABILITY or declared is None:
            return lang, "identified"
    if declared:
        return declared, "declared"
    if cfg.detect and prose.strip():
        return identify(prose)[0], "identified (short text)"
    return (cfg.keep[0] if cfg.keep else "en"), "assumed"
