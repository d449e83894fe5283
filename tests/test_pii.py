"""PII on the labelled set of tests/pii_cases: precision and recall per kind, and the numbers of
documentation (decimals, benchmark output, table figures) left alone."""
from __future__ import annotations

from bench.pii import load_cases, score
from corpus.config import PIIConfig
from corpus.pii import scrub


def test_the_labelled_set_is_large_and_varied():
    cases = load_cases()
    result = score(cases)
    assert result["true_pii"] >= 200 and result["hard_negatives"] >= 200
    assert all(result["kinds"][kind]["labelled"] >= 25 for kind in ("email", "ip", "phone", "card", "secret"))
    phones = [value for case in cases for kind, value in case["pii"] if kind == "phone"]
    for prefix in ("+44", "+49", "+33", "+81", "+86", "+91"):
        assert sum(p.startswith(prefix) for p in phones) >= 5, prefix
    assert {"decimal", "version", "timestamp", "hash", "benchmark", "table", "section", "uuid"} <= set(
        result["hard_negative_families"])


def test_precision_and_recall_per_kind_meet_the_targets():
    result = score(load_cases())
    for kind, row in result["kinds"].items():
        assert row["precision"] >= 0.98 and row["recall"] >= 0.95, (kind, row, result["misses"][:5],
                                                                     result["false_positives"][:5])


def test_digit_runs_in_decimals_figures_and_tables_are_not_cards():
    text = ("The mean was 827.4111111111111111 and 4111111111111111.25; elapsed 4539578763621486 ns; "
            "| 4096 | 8192 | 16384 |; sizes 4111 1111 1111 1111 1111 1111. Card 4111 1111 1111 1111.")
    out, counts = scrub(text, PIIConfig())
    assert counts == {"card": 1}
    assert out.endswith("Card <CARD>.") and "827.4111111111111111" in out and "4539578763621486 ns" in out


def test_the_searches_skipped_for_want_of_a_digit_or_a_prefix_miss_nothing():
    """`find` searches a kind only in text that holds what its matches must (a digit, an "@", a key's
    prefix, a secret's name): these are found all the same, the edge cases of those guards included."""
    cfg = PIIConfig(public_ips_only=False)
    cases = {"server dead:beef::face": "server <IP>",  # an IPv6 address without a decimal digit
             'ſecret = "Ab3dEf9hIjKlmn7"': 'ſecret = "<SECRET>"',  # (?i) takes "ſ" for "s"; casefold does too
             "PASSWD: Zq8xYw7vUt6s": "PASSWD: <SECRET>",
             "mail x.y@example.org now": "mail <EMAIL> now",
             "no digits, no at-sign, no key here": "no digits, no at-sign, no key here"}
    assert {text: scrub(text, cfg)[0] for text in cases} == cases
