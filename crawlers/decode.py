"""Bytes of a page to text, when servers lie about the charset or say nothing.

A declared charset (BOM, HTTP header, `<meta>`) is believed only if the bytes decode under it without an
error; otherwise UTF-8 is tried, then charset-normalizer's guess. Legacy labels map to the superset that
browsers use (WHATWG): gb2312/GBK → gb18030, Shift_JIS → cp932, latin-1/ASCII → cp1252."""
from __future__ import annotations

import codecs
import re

META_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?\s*([A-Za-z0-9_.:-]+)""", re.I)
BOMS = ((codecs.BOM_UTF8, "utf-8-sig"), (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"))
SUPERSETS = {"gb2312": "gb18030", "gbk": "gb18030", "x-gbk": "gb18030", "shift_jis": "cp932", "sjis": "cp932",
             "x-sjis": "cp932", "ms_kanji": "cp932", "latin_1": "cp1252", "iso8859_1": "cp1252", "ascii": "cp1252"}
# What an undeclared, non-UTF-8 page on the web is most likely in; a guess among every codec confuses
# Western pages with Baltic or Central European ones.
LIKELY_UNDECLARED = ["cp1252", "gb18030", "cp932", "euc_jp", "big5", "euc_kr", "cp1251"]
CONTROL_BYTES = bytes(b for b in range(32) if b not in b"\t\n\r\f\x1b")


class NotText(ValueError):
    """The body is binary data, whatever its Content-Type says."""


def _normalize(label: str | None) -> str | None:
    if not label:
        return None
    try:
        name = codecs.lookup(label.strip().strip("\"'")).name
    except LookupError:
        return None
    return SUPERSETS.get(name, name)


def looks_binary(body: bytes) -> bool:
    head = body[:4096]
    if not head or any(head.startswith(bom) for bom, _ in BOMS[1:]):
        return False
    return b"\x00" in head or sum(head.count(bytes([b])) for b in CONTROL_BYTES) > 0.05 * len(head)


def decode_html(body: bytes, header_charset: str | None) -> tuple[str, str]:
    """(text, encoding used) of an HTML body; raises NotText for binary data."""
    for bom, encoding in BOMS:
        if body.startswith(bom):
            return body.decode(encoding, errors="replace"), encoding
    if looks_binary(body):
        raise NotText("binary bytes")
    meta = META_CHARSET.search(body[:4096])
    candidates = [_normalize(header_charset), _normalize(meta.group(1).decode("ascii") if meta else None), "utf-8"]
    for encoding in dict.fromkeys(c for c in candidates if c):
        try:
            return body.decode(encoding), encoding
        except (UnicodeDecodeError, LookupError):
            continue
    from charset_normalizer import from_bytes

    guess = from_bytes(body, cp_isolation=LIKELY_UNDECLARED).best()
    encoding = _normalize(guess.encoding) if guess is not None else "cp1252"
    return body.decode(encoding or "cp1252", errors="replace"), encoding or "cp1252"
