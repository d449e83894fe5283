"""Pass 1 of cleaning, in the workers: each page's main content as blocks, its title and its language."""
from __future__ import annotations

import hashlib
import json

from corpus.config import CleanConfig
from corpus.extract import extract_page
from corpus.language import page_language
from corpus.workers import worker_config
from corpus.split import document_url
from crawlers.urls import host_of


def extract_record(page: dict, config: CleanConfig) -> dict:
    url = document_url(page.get("final_url") or page["url"])
    extracted = extract_page(page["html"])
    prose = "\n".join(b.text for b in extracted.blocks if b.is_prose)
    lang, decided = page_language(extracted.lang, prose, config.languages)
    return {"url": url, "host": host_of(url), "sha256": page.get("sha256"), "extract_key": extract_key(config),
            "title": extracted.title, "lang": lang, "lang_decided": decided,
            "blocks": [[b.kind, b.text] for b in extracted.blocks]}


def extract_key(config: CleanConfig) -> str:
    """What pass 1's output depends on besides the page: a page with the same bytes and key is reused."""
    return hashlib.sha256(json.dumps(["extract-v3", config.languages.model_dump()], sort_keys=True).encode()
                          ).hexdigest()[:16]


def extract_chunk(pages: list[dict]) -> list[dict]:
    """Pass 1 over a chunk of pages; a page the parent will reuse from the last clean passes through."""
    config = worker_config()
    out = []
    for page in pages:
        if page.get("reuse"):
            out.append(page)
            continue
        try:
            out.append(extract_record(page, config))
        except Exception as e:  # noqa: BLE001 - one unparseable page must not stop the stage
            out.append({"url": page.get("final_url") or page.get("url", "?"), "error": f"{type(e).__name__}: {e}"})
    return out
