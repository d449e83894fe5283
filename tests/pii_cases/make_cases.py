"""Writes tests/pii_cases/cases.jsonl: true PII strings in the formats each kind comes in, and hard negatives
from documentation, each in a short context. Deterministic; run from the repository root:

    python tests/pii_cases/make_cases.py

heldout.jsonl beside it was written by hand after the detector was settled on this set."""
import json
import os
import random
import string
rng = random.Random(15)

def luhn_complete(prefix, length):
    digits = [int(c) for c in prefix]
    while len(digits) < length - 1:
        digits.append(rng.randrange(10))
    for check in range(10):
        d = digits + [check]
        total = 0
        for i, n in enumerate(reversed(d)):
            n = n * 2 if i % 2 else n
            total += n - 9 if n > 9 else n
        if total % 10 == 0:
            return "".join(map(str, d))

def luhn_ok(s):
    total = 0
    for i, c in enumerate(reversed(s)):
        n = int(c) * (2 if i % 2 else 1)
        total += n - 9 if n > 9 else n
    return total % 10 == 0

cases = []
def pos(kind, value, template):
    assert "{}" in template
    cases.append({"text": template.format(value), "pii": [[kind, value]]})

def neg(family, value, template):
    cases.append({"text": template.format(value), "pii": [], "hard": [[family, value]]})

# ---------------------------------------------------------------- emails
first = ["jane", "li.wei", "m.mueller", "sophie", "raj.patel", "k_tanaka", "ops-team", "a.b.c", "Pierre.Dupont",
         "support", "john.smith+docs", "dev_42", "x", "ANNA.SCHMIDT", "t.o'neil"]
domains = ["example.com", "corp.example.org", "mail.example.co.uk", "example.de", "uni-example.fr", "example.co.jp",
           "example.com.cn", "example.in", "sub.dept.example.io", "example-mail.net", "example.museum"]
email_ctx = ["Write to {} for access.", "Contact: {}", "Reported by {} on the mailing list.", "<{}>",
             "Maintainer: Jane Doe ({})", "mailto {} with the log attached.", "Send patches to {}, please.",
             "From: {}", "Questions go to {}; answers come within a day.", "Author email = \"{}\""]
for i in range(32):
    local = first[i % len(first)].replace("'", "")
    pos("email", f"{local}@{domains[i % len(domains)]}", email_ctx[i % len(email_ctx)])

# ---------------------------------------------------------------- phones
phones = [
    "+44 20 7946 0958", "+44 (0)20 7946 0958", "+44 161 496 0000", "+44 7700 900123", "+44-20-7946-0958",
    "+44.20.7946.0958", "+442079460958", "+44 (0) 113 496 0000",
    "+49 30 901820", "+49 (0)89 1234567", "+49 170 1234567", "+49-30-1234-5678", "+49 40 3570 8900",
    "+4915112345678", "+49 (0) 221 9876543", "+49.89.12345678",
    "+33 1 23 45 67 89", "+33 (0)1 23 45 67 89", "+33 6 12 34 56 78", "+33.1.23.45.67.89", "+33-4-91-12-34-56",
    "+33612345678", "+33 (0)6 98 76 54 32",
    "+81 3-1234-5678", "+81 90 1234 5678", "+81-3-1234-5678", "+81 (0)3 1234 5678", "+81 6 6123 4567",
    "+819012345678", "+81.3.1234.5678",
    "+86 10 1234 5678", "+86 138 0013 8000", "+86-21-6123-4567", "+86 (10) 8765 4321", "+8613800138000",
    "+86 755 8123 4567",
    "+91 98765 43210", "+91 22 2345 6789", "+91-80-4123-4567", "+919876543210", "+91 (22) 2345 6789",
    "+91 11 2345 6789",
    "+1 415-555-0132", "+1 (212) 555-0199", "+1.415.555.0132", "+14155550132", "+1 415 555 0132",
    "(212) 555-0199", "415-555-0132", "415.555.0132", "1-800-555-0199", "(650) 253-0000",
    "+7 495 123-45-67", "+34 912 34 56 78", "+39 06 1234 5678", "+61 2 9876 5432", "+55 11 91234-5678",
    "+31 20 123 4567", "+46 8 123 456 78", "+82 2-312-3456", "+65 6123 4567", "+353 1 234 5678",
    "+41 44 668 18 00", "+48 22 123 45 67",
    "020 7946 0958", "0161 496 0000", "01 23 45 67 89", "06.12.34.56.78", "03-1234-5678", "090-1234-5678",
    "030 901820", "089 1234567", "010-1234-5678", "0755-8123-4567",
]
phone_ctx = ["Call {} between 9 and 5.", "Tel: {}", "Phone {} (office)", "For support ring {}.",
             "Fax: {}", "Mobile {}, evenings only.", "Hotline: {}", "tel. {}", "Reach the desk at {} any weekday.",
             "Telefon: {}", "Contact the office on {}."]
for i, p in enumerate(phones):
    pos("phone", p, phone_ctx[i % len(phone_ctx)])

# ---------------------------------------------------------------- cards
card_specs = [("4", 16), ("4", 16), ("4", 13), ("4", 19), ("51", 16), ("53", 16), ("55", 16), ("2221", 16),
              ("2720", 16), ("34", 15), ("37", 15), ("6011", 16), ("65", 16), ("644", 16), ("3530", 16),
              ("3566", 16), ("62", 16), ("36", 14), ("300", 14), ("62", 19)]
card_ctx = ["Card {} was declined.", "Paid with {}", "card number: {}", "Use test card {} in the sandbox.",
            "The customer entered {} at checkout.", "PAN {} (masked in logs)"]
for i in range(40):
    prefix, length = card_specs[i % len(card_specs)]
    digits = luhn_complete(prefix, length)
    style = i % 3
    if length == 16 and style == 1:
        value = " ".join(digits[j:j + 4] for j in range(0, 16, 4))
    elif length == 16 and style == 2:
        value = "-".join(digits[j:j + 4] for j in range(0, 16, 4))
    elif length == 15 and style:
        sep = " " if style == 1 else "-"
        value = sep.join([digits[:4], digits[4:10], digits[10:]])
    elif length == 14 and style:
        value = " ".join([digits[:4], digits[4:10], digits[10:]])
    elif length == 19 and style:
        value = " ".join([digits[:4], digits[4:8], digits[8:12], digits[12:16], digits[16:]])
    else:
        value = digits
    pos("card", value, card_ctx[i % len(card_ctx)])

# ---------------------------------------------------------------- IPs (public)
ipv4 = ["93.184.216.34", "8.8.8.8", "151.101.1.69", "140.82.112.3", "52.94.236.248", "104.16.132.229",
        "185.199.108.153", "13.107.42.14", "172.217.16.142", "23.45.67.89", "81.2.69.160", "203.119.88.1",
        "45.33.32.156", "1.1.1.1", "62.75.216.34", "77.88.55.60", "109.234.38.12", "212.58.244.22",
        "31.13.72.36", "157.240.1.35"]
ipv6 = ["2a00:1450:4001:82a::200e", "2606:4700:4700::1111", "2001:4860:4860::8888", "2a03:2880:f12f:83:face:b00c:0:25de",
        "2620:0:862:ed1a::1", "2400:cb00:2048:1::6810:8c3f", "2a02:26f0:fd::5c7a:1f9b", "2607:f8b0:4005:80b::200e"]
ip_ctx = ["Requests came from {} overnight.", "client_ip={}", "The server at {} answered slowly.",
          "Blocked {} after repeated failures.", "ssh admin@server ({}) is refused.", "Resolved to {}."]
for i, v in enumerate(ipv4 + ipv6):
    pos("ip", v, ip_ctx[i % len(ip_ctx)])

# ---------------------------------------------------------------- secrets
def rand(chars, n):
    return "".join(rng.choice(chars) for _ in range(n))
A = string.ascii_letters + string.digits
secrets = [
    "AKIA" + rand(string.ascii_uppercase + string.digits, 16), "ASIA" + rand(string.ascii_uppercase + string.digits, 16),
    "AKIAIOSFODNN7EXAMPLE",
    "ghp_" + rand(A, 36), "gho_" + rand(A, 36), "ghs_" + rand(A, 36), "github_pat_" + rand(A, 22) + "_" + rand(A, 59),
    "xoxb-" + rand(string.digits, 11) + "-" + rand(string.digits, 12) + "-" + rand(A, 24),
    "xoxp-" + rand(string.digits, 11) + "-" + rand(A, 20),
    "sk-" + rand(A, 48), "sk-proj-" + rand(A + "_-", 56),
    "AIza" + rand(A + "_-", 35), "AIza" + rand(A + "_-", 35),
    "sk_live_" + rand(A, 24), "rk_live_" + rand(A, 24), "sk_test_" + rand(A, 24),
    "glpat-" + rand(A + "_-", 20), "npm_" + rand(A, 36), "hf_" + rand(A, 34),
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9." + "eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIn0."
    + rand(A + "_-", 43),
]
secret_ctx = ["export TOKEN={}", "The leaked key {} was revoked.", "Authorization: Bearer {}", "key: {}",
              "Found {} in the commit history."]
for i, s in enumerate(secrets):
    pos("secret", s, secret_ctx[i % len(secret_ctx)])
for name, value in [("api_key", rand(A, 32)), ("password", "Tr0ub4dor&3x!" + rand(A, 4)), ("secret", rand(A, 40)),
                    ("access_token", rand(A, 28)), ("auth_token", rand(A, 20) + "9"), ("client_secret", rand(A, 32)),
                    ("API_KEY", rand(A, 24)), ("db_password", "p4ss-" + rand(A, 14)), ("private_key", rand(A, 44)),
                    ("SECRET_KEY", rand(A + "!@#%^&*(-_=+)", 50))]:
    cases.append({"text": f"{name} = \"{value}\"", "pii": [["secret", value]]})
pem = "-----BEGIN RSA PRIVATE KEY-----\n" + "\n".join(rand(A + "+/", 64) for _ in range(4)) + "\n-----END RSA PRIVATE KEY-----"
cases.append({"text": "The key file held\n" + pem + "\nand nothing else.", "pii": [["secret", pem]]})
pem2 = "-----BEGIN OPENSSH PRIVATE KEY-----\n" + "\n".join(rand(A + "+/", 70) for _ in range(3)) + "\n-----END OPENSSH PRIVATE KEY-----"
cases.append({"text": pem2, "pii": [["secret", pem2]]})

# ================================================================ hard negatives (documentation)
for _ in range(22):  # decimals whose fractional digits pass Luhn (the 827.<CARD> bug)
    frac = luhn_complete(rng.choice("3456"), rng.choice([13, 15, 16, 17, 19]))
    value = f"{rng.randrange(0, 1000)}.{frac}"
    neg("decimal", value, rng.choice(["The mean was {} over the run.", "x = {}", "loss {}", "pi is about {}",
                                      "| 0.5 | {} |", "It returned {} as expected."]))
for _ in range(8):
    whole = luhn_complete(rng.choice("3456"), 16)
    neg("decimal", f"{whole}.{rng.randrange(10, 99)}", rng.choice(["total = {}", "Sum: {} units"]))
for v in ["3.11.4", "2.0.0", "1.26.4", "10.0.19045", "4.8.3.1", "2.7.18", "0.23.3", "2026.8.0", "v1.2.3",
          "1.2.3.4", "3.8.18", "5.15.0-91-generic", "6.1.0-17", "12.4.3.2", "2.14.1", "1.0.0-rc.1",
          "4.2.10.1", "8.0.35", "15.3.2", "1.1.1w"]:
    neg("version", v, rng.choice(["Requires version {} or later.", "Released as {}", "pip install pkg=={}",
                                  "Tested with Python {}.", "kernel {}", "Changed in version {}."]))
for t in ["2026-11-28", "2026-11-28T09:35:00Z", "2026-12-05 07:38:53", "09:35:12.123456", "1732791234",
          "1732791234567", "1732791234567890123", "Sat Dec  5 07:38:53 UTC 2026", "20261128T093500",
          "2026/11/28 12:00", "28.11.2026", "11/28/2026", "12:30:45", "2026-11-28 12:30:45.123456789",
          "1701423000.123456"]:
    neg("timestamp", t, rng.choice(["Built on {}.", "[{}] INFO started", "timestamp: {}", "Last modified {}"]))
for _ in range(12):
    h = rand("0123456789abcdef", rng.choice([40, 64, 32, 7, 12]))
    neg("hash", h, rng.choice(["commit {}", "sha256: {}", "md5 {}", "Fixed in {}.", "digest={}"]))
for h in ["4111111111111111aa", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
          "5105105105105100ff", "da39a3ee5e6b4b0d3255bfef95601890afd80709"]:
    neg("hash", h, "checksum {}")
for _ in range(14):
    u = "-".join(rand("0123456789abcdef", n) for n in (8, 4, 4, 4, 12))
    neg("uuid", u, rng.choice(["run_id: {}", "Request {} failed.", "id = '{}'", "models:/m-{}"]))
for u in ["12345678-1234-5678-1234-567812345678", "41111111-1111-1111-1111-111111111111"]:
    neg("uuid", u, "uuid {}")
bench = ["4539578763621486 ns", "1024 2048 4096 8192", "12,345,678.90", "3 141 592 653 589 793", "4.53957876362148 s",
         "5 120 000 1 024 000 512 000", "  4096   8192  16384  32768", "1.2e-05", "6.02214076e23", "4,111,111,111,111,111",
         "2 147 483 647", "18446744073709551616", "9223372036854775807", "4 294 967 295", "0x7fffffffffffffff",
         "4111 1111 1111 1111 1111 1111", "356.2 MB/s", "99.97%", "+12.5%", "-3.2 dB", "+0.5 1.2 2.4 3.8",
         "1234 5678 9012 3456", "48.3 ± 0.7 ms", "5000000000000000", "4000 tokens/s 3000 tokens/s",
         "+1.25 2.50 3.75 5.00", "+2.5 3.1 4.2 5.0", "+12.3 ms", "+1024 bytes", "+100 200 300"]
for b in bench:
    neg("benchmark", b, rng.choice(["Output: {}", "{}", "| run 1 | {} |", "median {}", "We measured {} on 2 cores."]))
for _ in range(20):  # timing columns: 16 digits in nanoseconds with a unit
    digits = luhn_complete(rng.choice("3456"), 16)
    neg("benchmark", f"{digits} ns", rng.choice(["elapsed {}", "wall {}", "{} total"]))
tables = ["| 4096 | 8192 | 16384 |", "| 5 | 4.8 | 3.2 | 2.7 |", "| 2021 | 2022 | 2023 | 2024 |",
          "512 | 1024 | 2048 | 4096", "| 0.12 | 0.34 | 0.56 |", "| 65536 | 4539 5787 |",
          "| 1 048 576 | 2 097 152 |", "| 415 | 555 | 0132 |", "| 20 | 7946 | 0958 |", "30 40 50 60 70 80 90 100",
          "| 2020-01-01 | 2020-12-31 |", "| 10.0.0.1 | 255.255.255.0 |", "3.0 | 3.1 | 3.2 | 3.3",
          "| 01 | 23 | 45 | 67 | 89 |", "| 4111 | 1111 | 1111 | 1111 |", "| 128 | 256 | 384 | 512 | 640 |",
          "1 2 3 4 5 6 7 8 9 10 11 12 13 14 15", "| 03 | 1234 | 5678 |", "| 100 | 1000 | 10000 | 100000 |",
          "| 2720 | 0.99 | 4.32 |"]
for t in tables:
    neg("table", t, "{}")
for s in ["1.2.3", "§ 4.8.3.1", "Section 12.4.3.2", "chapter 3.2.1.4", "see 2.3.4.5", "Figure 4.12",
          "Table 3.1", "Appendix B.2.1", "RFC 7231 section 6.5.1", "PEP 3119", "step 10.1.1.2", "clause 8.2.3.1.4"]:
    neg("section", s, "{} describes it.")
for p in ["127.0.0.1:8080", "localhost:5000", "0.0.0.0:80", ":443", "port 8443", "--port 65535",
          "192.168.1.4:22", "10.0.0.1", "172.16.0.10", "::1", "fe80::1ff:fe23:4567:890a", "192.0.2.1",
          "198.51.100.7", "203.0.113.9", "2001:db8::1", "[::1]:8000", "169.254.169.254", "255.255.255.0",
          "0.0.0.0/0", "224.0.0.251"]:
    neg("port_or_private_address", p, rng.choice(["Listen on {}.", "bind {}", "The default is {}."]))
for s in ["logo@2x.png", "icon@3x.webp", "git@github.com:org/repo.git", "@property", "pkg@1.2.3",
          "user@localhost", "${HOME}/.ssh", "@media (max-width: 600px)", "docker pull image@sha256:abc123",
          "npm i @types/node@20.1.0", "jane at example dot com", "a@b"]:
    neg("email_like", s, "{}")
for s in ["api_key = os.environ['API_KEY']", "password = get_password_from_vault()", "api_key = \"YOUR_API_KEY_HERE\"",
          "token: <your-token>", "password = \"changeme\"", "SECRET_KEY = \"xxxxxxxxxxxxxxxxxxxxxxxx\"",
          "secret = settings.SECRET_KEY_FROM_ENV", "api_key: ${{ secrets.API_KEY }}",
          "access_token = request.headers.get('Authorization')", "sk-learn", "ghp_xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
          "AKIA****************", "password_hash = bcrypt.hashpw(password, salt)", "auth_token = None",
          "export API_KEY=<paste your key here>", "secret_key = load_secret_key_from_file(path)",
          "The token_count_per_batch_is_large setting", "private_key = PrivateKey.generate()",
          "-----BEGIN PUBLIC KEY-----", "-----BEGIN CERTIFICATE-----"]:
    neg("secret_like", s, "{}")

out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "cases.jsonl")

with open(out, "w") as f:
    for c in cases:
        for kind, value in c["pii"]:
            assert value in c["text"]
        f.write(json.dumps(c, ensure_ascii=False) + "\n")
from collections import Counter
print(Counter(k for c in cases for k, _ in c["pii"]), sum(len(c.get("hard", [])) for c in cases))
print(Counter(f for c in cases for f, _ in c.get("hard", [])))
