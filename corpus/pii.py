"""Personal data and secrets replaced by placeholders, counted by kind."""
from __future__ import annotations

import ipaddress
import re
from collections import Counter

from corpus.config import PIIConfig

EMAIL = re.compile(r"(?<![\w.+-])[\w.+-]+@(?:[A-Za-z0-9-]+\.)+[A-Za-z]{2,}(?![\w-])")
IPV4 = re.compile(r"(?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?![\w.]*\d)")
IPV6 = re.compile(r"(?<![\w:])(?:[0-9A-Fa-f]{1,4}:){2,7}[0-9A-Fa-f]{1,4}(?![\w:])")
# Phone numbers written as phone numbers: an international prefix, or (area) code, or 3-3-4 groups.
PHONE = re.compile(
    r"(?<![\w+])(?:\+\d{1,3}[ .-]?(?:\(\d{1,4}\)[ .-]?)?\d{2,4}(?:[ .-]\d{2,4}){1,4}"
    r"|\(\d{3}\)[ .-]?\d{3}[ .-]\d{4}|\d{3}[.-]\d{3}[.-]\d{4})(?![\w-])"
)
# Issuer prefixes 2-6 (Mastercard 2-series and 5, Amex 3, Visa 4, Discover 6), 13-19 digits.
CARD = re.compile(r"(?<![\w-])[2-6](?:[ -]?\d){12,18}(?![\w-])")
SECRETS = [
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?-----END [A-Z ]*PRIVATE KEY-----", re.S),
    re.compile(r"(?<![A-Z0-9])(?:AKIA|ASIA)[A-Z0-9]{16}(?![A-Z0-9])"),
    re.compile(r"\bgh[pousr]_[A-Za-z0-9]{36,}\b"),
    re.compile(r"\bxox[abprs]-[A-Za-z0-9-]{10,}\b"),
    re.compile(r"\bsk-[A-Za-z0-9_-]{20,}\b"),
    re.compile(r"\bAIza[0-9A-Za-z_-]{35}\b"),
]
# "api_key = 'abc...'": the value goes, the name stays.
ASSIGNED_SECRET = re.compile(
    r"(?i)\b((?:api|access|secret|private|auth)[_-]?(?:key|token)|password|passwd|secret)"
    r"(\s*[:=]\s*[\"']?)([A-Za-z0-9_\-/+=.]{16,})"
)


def _luhn(digits: str) -> bool:
    total = 0
    for i, d in enumerate(reversed(digits)):
        n = int(d) * (2 if i % 2 else 1)
        total += n - 9 if n > 9 else n
    return total % 10 == 0


def scrub(text: str, cfg: PIIConfig) -> tuple[str, Counter]:
    """`text` with personal data replaced, and how many of each kind were replaced."""
    counts: Counter[str] = Counter()
    if not cfg.enabled:
        return text, counts

    def sub(pattern: re.Pattern, kind: str, placeholder: str, keep=lambda m: False) -> None:
        nonlocal text

        def replace(m: re.Match) -> str:
            if keep(m):
                return m.group(0)
            counts[kind] += 1
            return placeholder

        text = pattern.sub(replace, text)

    if cfg.secrets:
        for pattern in SECRETS:
            sub(pattern, "secret", "<SECRET>")
        text, n = ASSIGNED_SECRET.subn(lambda m: m.group(1) + m.group(2) + "<SECRET>", text)
        counts["secret"] += n
    if cfg.emails:
        sub(EMAIL, "email", "<EMAIL>")
    if cfg.ips:
        sub(IPV4, "ip", "<IP>", lambda m: _keep_ip(m.group(0), cfg))
        sub(IPV6, "ip", "<IP>", lambda m: _keep_ip(m.group(0), cfg))
    if cfg.cards:
        sub(CARD, "card", "<CARD>", lambda m: not _card_like(re.sub(r"\D", "", m.group(0))))
    if cfg.phones:
        sub(PHONE, "phone", "<PHONE>")
    return text, +counts


def _card_like(digits: str) -> bool:
    return len(set(digits)) > 1 and _luhn(digits)


def _keep_ip(candidate: str, cfg: PIIConfig) -> bool:
    try:
        address = ipaddress.ip_address(candidate)
    except ValueError:
        return True  # not an address at all
    if address.version == 4 and all(len(part) == 1 for part in candidate.split(".")):
        return True  # "4.8.3.1": a section or version number far more often than an address
    return cfg.public_ips_only and not address.is_global
