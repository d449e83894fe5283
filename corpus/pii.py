"""Personal data and secrets replaced by placeholders, counted by kind.

Each kind is a pattern for candidates and a check that throws out the numbers documentation is full of:
decimals, version and section numbers, timestamps, hashes, benchmark output and table figures. A card
is a Luhn-valid number with an issuer's prefix and length, written whole or in the issuer's groups, not
part of a decimal, a longer row of figures, or a measurement; a phone number has a plausible country
code (or a national trunk 0, or the North American shape) and a phone's number of digits. The labelled
set in `tests/pii_cases/` measures both: `python bench/pii.py`."""
from __future__ import annotations

import ipaddress
import re
from collections import Counter
from dataclasses import dataclass

from corpus.config import PIIConfig

PLACEHOLDERS = {"email": "<EMAIL>", "ip": "<IP>", "phone": "<PHONE>", "card": "<CARD>", "secret": "<SECRET>"}

# ------------------------------------------------------------------------------------------- e-mail
EMAIL = re.compile(r"(?<![\w.+-])[\w.+-]+@(?:[A-Za-z0-9-]+\.)+([A-Za-z]{2,})(?![\w-]|:\S)")
# "logo@2x.png" is an image at twice the resolution, not an address.
FILE_EXTENSIONS = {"png", "jpg", "jpeg", "gif", "svg", "webp", "avif", "ico", "bmp", "css", "js", "pdf", "html",
                   "htm", "txt", "json", "xml", "zip", "gz"}

# ------------------------------------------------------------------------------------------- IP
IPV4 = re.compile(r"(?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?![\w.]*\d)")
IPV6 = re.compile(r"(?<![\w:.])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}(?![\w:])")
# What precedes a version or section number, and what precedes an address.
NUMBERING_BEFORE = re.compile(r"(?i)(?:version|release[ds]?|python|kernel|build|section|chapter|clause|appendix|"
                              r"step|see|§|==|>=|<=|~=)(?:\W+\w{1,3})?\W{0,3}$")
ADDRESS_BEFORE = re.compile(r"(?i)(?:\bip|_ip|\bips|address|addr|server|host|dns|resolver|nameserver|gateway)"
                            r"\W{0,3}$")

# ------------------------------------------------------------------------------------------- cards
# Whole, or in groups of 4-4-4-4(-3), 4-6-5 (American Express), 4-6-4 (Diners) with one separator.
CARD = re.compile(
    r"(?<![\w.,+-])(?<!\d )(?<!\d-)"
    r"(?:\d{13,19}|\d{4}([ -])\d{4}\1\d{4}\1\d{4}(?:\1\d{3})?|\d{4}([ -])\d{6}\2\d{4,5})"
    r"(?![\w-]|[.,]\d|[ -]\d)(?!\s*(?:ns|µs|us|ms|s|sec|seconds|bytes|B|KB|MB|GB|KiB|MiB|GiB|tokens|ops|it)\b)"
)
# (issuer prefixes, lengths): Visa, Mastercard, Amex, Diners, Discover, JCB, UnionPay.
CARD_ISSUERS = [
    (("4",), {13, 16, 19}),
    (tuple(str(n) for n in range(51, 56)) + tuple(str(n) for n in range(2221, 2721)), {16}),
    (("34", "37"), {15}),
    (("300", "301", "302", "303", "304", "305", "36", "38", "39"), {14, 16}),
    (("6011", "65") + tuple(str(n) for n in range(644, 650)), {16, 17, 18, 19}),
    (tuple(str(n) for n in range(3528, 3590)), {16, 17, 18, 19}),
    (("62",), {16, 17, 18, 19}),
]

# ------------------------------------------------------------------------------------------- phones
PHONE_END = r"(?![\w-]|[.,]\d)"
# +CC, an optional "(0)", then groups; the first group after the country code may be one digit.
INTERNATIONAL_PHONE = re.compile(
    r"(?<![\w+])\+(\d{1,3})(?:[ .-]?\(0\))?[ .-]?(?:\(\d{1,5}\)|\d{1,14})"
    r"(?:(?:[ .-]|(?<=\)) ?)(?:\(\d{2,5}\)|\d{2,8})){0,5}" + PHONE_END
)
NORTH_AMERICAN_PHONE = re.compile(
    r"(?<![\w.+-])(?:1[ .-])?(?:\([2-9]\d\d\)[ .-]?|[2-9]\d\d[.-])[2-9]\d\d[.-]\d{4}" + PHONE_END
)
# A national number: trunk 0, then groups with one separator (020 7946 0958, 01 23 45 67 89, 03-1234-5678).
NATIONAL_PHONE = re.compile(r"(?<![\w.+/-])(?<!\d )0\d{1,4}([ ./-])\d{2,8}(?:\1\d{2,4}){0,3}" + PHONE_END)
# Country calling codes: 1 and 7, the two-digit ones, and the first two digits of the three-digit ones.
COUNTRY_CODES_2 = {20, 27, 30, 31, 32, 33, 34, 36, 39, 40, 41, 43, 44, 45, 46, 47, 48, 49, 51, 52, 53, 54, 55, 56,
                   57, 58, 60, 61, 62, 63, 64, 65, 66, 81, 82, 84, 86, 90, 91, 92, 93, 94, 95, 98}
COUNTRY_CODE_3_PREFIXES = {21, 22, 23, 24, 25, 26, 29, 35, 37, 38, 42, 50, 59, 67, 68, 69, 85, 87, 88, 96, 97, 99}

# ------------------------------------------------------------------------------------------- secrets
# (strings one of which a match contains, pattern): a text holding none of them is not searched.
SECRETS = [
    (("-----BEGIN ",), re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?-----END [A-Z ]*PRIVATE KEY-----", re.S)),
    (("AKIA", "ASIA"), re.compile(r"(?<![A-Z0-9])(?:AKIA|ASIA)[A-Z0-9]{16}(?![A-Z0-9])")),
    (("gh",), re.compile(r"\bgh[pousr]_[A-Za-z0-9]{36,}\b")),
    (("github_pat_",), re.compile(r"\bgithub_pat_[A-Za-z0-9_]{60,}\b")),
    (("xox",), re.compile(r"\bxox[abprs]-[A-Za-z0-9-]{10,}\b")),
    (("sk-",), re.compile(r"\bsk-(?:proj-)?[A-Za-z0-9_-]{20,}")),
    (("AIza",), re.compile(r"\bAIza[0-9A-Za-z_-]{35}(?![\w-])")),
    (("k_live_", "k_test_"), re.compile(r"\b[sr]k_(?:live|test)_[A-Za-z0-9]{20,}\b")),
    (("glpat-",), re.compile(r"\bglpat-[A-Za-z0-9_-]{20,}")),
    (("npm_",), re.compile(r"\bnpm_[A-Za-z0-9]{36}\b")),
    (("hf_",), re.compile(r"\bhf_[A-Za-z0-9]{30,}\b")),
    (("eyJ",), re.compile(r"\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{16,}")),  # a JSON Web Token
]
# "api_key = 'abc...'": the value goes, the name stays.
ASSIGNED_SECRET = re.compile(
    r"(?i)\b\w*?(?:api[_-]?key|secret[_-]?key|access[_-]?key|private[_-]?key|token|secret|password|passwd|pwd)\b"
    r"\s*[:=]\s*(?:([\"'])([^\s\"']{12,200})\1|([A-Za-z0-9_\-/+=.]{12,200}))"
)
# What the name of ASSIGNED_SECRET holds, case-folded as (?i) matches it ("ſ" is an "s", "K" a "k").
SECRET_NAME_PARTS = ("key", "token", "secret", "passw", "pwd")
DIGIT = re.compile(r"\d")
# Values that say "put your key here" rather than being one.
PLACEHOLDER_VALUE = re.compile(r"(?i)your|example|x{6}|changeme|placeholder|dummy|redacted|\*{4}|<|\$\{")


@dataclass(frozen=True)
class Found:
    kind: str
    start: int
    end: int


def find(text: str, cfg: PIIConfig) -> list[Found]:
    """The personal data and secrets in `text`, in text order; an earlier kind wins an overlap."""
    found: list[Found] = []
    taken: list[tuple[int, int]] = []

    def add(kind: str, start: int, end: int) -> None:
        if all(end <= s or start >= e for s, e in taken):
            taken.append((start, end))
            found.append(Found(kind, start, end))

    # Each pattern is searched only in a text that holds what every match of it must: most prose has no
    # digit, no "@" and no key's prefix, and searching it all was a sixth of cleaning's time.
    if cfg.secrets:
        for hints, pattern in SECRETS:
            if any(hint in text for hint in hints):
                for m in pattern.finditer(text):
                    if len(set(m.group(0))) >= 8:  # "ghp_xxxx...": a placeholder in the shape of a key
                        add("secret", m.start(), m.end())
        folded = text.casefold() if "=" in text or ":" in text else ""
        if any(part in folded for part in SECRET_NAME_PARTS):
            for m in ASSIGNED_SECRET.finditer(text):
                group = 2 if m.group(2) is not None else 3
                if _secret_value(m.group(group)):
                    add("secret", m.start(group), m.end(group))
    if cfg.emails and "@" in text:
        for m in EMAIL.finditer(text):
            if m.group(1).lower() not in FILE_EXTENSIONS:
                add("email", m.start(), m.end())
    digits = DIGIT.search(text) is not None
    if cfg.ips:
        for pattern in (IPV4, IPV6):
            if not (digits if pattern is IPV4 else text.count(":") >= 2):  # "dead:beef::face" has no digit
                continue
            for m in pattern.finditer(text):
                if pattern is IPV6 and sum(1 for g in m.group(0).split(":") if g) < 3:
                    continue  # "dead::beef", "Foo::bar": code, not an address
                if not _keep_ip(m.group(0), text[max(0, m.start() - 24):m.start()], cfg):
                    add("ip", m.start(), m.end())
    if cfg.cards and digits:
        for m in CARD.finditer(text):
            if _card_like(re.sub(r"\D", "", m.group(0))):
                add("card", m.start(), m.end())
    if cfg.phones and digits:
        for m in INTERNATIONAL_PHONE.finditer(text):
            if _international_phone(m.group(0)):
                add("phone", m.start(), m.end())
        for m in NORTH_AMERICAN_PHONE.finditer(text):
            add("phone", m.start(), m.end())
        for m in NATIONAL_PHONE.finditer(text):
            if _national_phone(m.group(0)):
                add("phone", m.start(), m.end())
    return sorted(found, key=lambda f: f.start)


def scrub(text: str, cfg: PIIConfig) -> tuple[str, Counter]:
    """`text` with personal data replaced, and how many of each kind were replaced."""
    counts: Counter[str] = Counter()
    if not cfg.enabled:
        return text, counts
    parts: list[str] = []
    at = 0
    for f in find(text, cfg):
        parts += [text[at:f.start], PLACEHOLDERS[f.kind]]
        at = f.end
        counts[f.kind] += 1
    return "".join(parts) + text[at:], +counts


def _luhn(digits: str) -> bool:
    total = 0
    for i, d in enumerate(reversed(digits)):
        n = int(d) * (2 if i % 2 else 1)
        total += n - 9 if n > 9 else n
    return total % 10 == 0


def _card_like(digits: str) -> bool:
    issued = any(digits.startswith(prefixes) and len(digits) in lengths for prefixes, lengths in CARD_ISSUERS)
    return issued and len(set(digits)) > 1 and _luhn(digits)


def _international_phone(candidate: str) -> bool:
    national = re.sub(r"\D", "", candidate.replace("(0)", ""))
    for cc_len in (1, 2, 3):
        code, rest = national[:cc_len], national[cc_len:]
        if cc_len == 1 and code == "1":
            if re.fullmatch(r"[2-9]\d\d[2-9]\d{6}", rest):
                return True
        elif cc_len == 1 and code == "7" or cc_len == 2 and int(code) in COUNTRY_CODES_2 or \
                cc_len == 3 and int(code[:2]) in COUNTRY_CODE_3_PREFIXES:
            if 8 <= len(national) <= 15 and len(rest) >= 6:
                return True
    return False


def _national_phone(candidate: str) -> bool:
    groups = re.split(r"[ ./-]", candidate)
    digits = sum(len(g) for g in groups)
    if not 9 <= digits <= 12:
        return False
    # Two groups: a long subscriber number (030 901820); more: groups of two to four digits.
    return len(groups[1]) >= 5 if len(groups) == 2 else all(len(g) <= 4 for g in groups[1:])


def _secret_value(value: str) -> bool:
    """A value assigned to a secret's name that looks like a secret, not code or a placeholder."""
    return (any(c.isdigit() for c in value) and any(c.isalpha() for c in value)
            and not PLACEHOLDER_VALUE.search(value) and len(set(value)) >= 8)


def _keep_ip(candidate: str, before: str, cfg: PIIConfig) -> bool:
    try:
        address = ipaddress.ip_address(candidate)
    except ValueError:
        return True  # not an address at all
    if address.version == 4:
        if NUMBERING_BEFORE.search(before):
            return True  # "version 4.2.10.1", "section 12.4.3.2"
        if all(len(part) == 1 for part in candidate.split(".")) and not ADDRESS_BEFORE.search(before):
            return True  # "4.8.3.1": a section or version number far more often than an address
    return cfg.public_ips_only and (not address.is_global or address.is_multicast)
