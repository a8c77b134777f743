"""Secret and PII redaction, applied to everything an agent captures before it is stored.

Agent memory holds shell commands, config files, logs and prompts, which is exactly where
credentials leak. Storage keeps only the redacted text, so a leaked key never reaches disk,
an index, or another agent's context.

Design, and why:
- Rules run in a fixed order, most specific first, so a GitHub token is reported as
  `github_token`, not as the `secret_assignment` it also is. Each rule sees the previous
  rules' output and never matches inside a `[REDACTED:<kind>]` placeholder, so nothing is
  redacted twice. Rules repeat until none finds anything (see `_run`), so redacting
  redacted text changes nothing, by construction.
- Speed: the 1 MiB content limit must redact in well under 200 ms. Python's `re` only
  skips ahead fast when a pattern starts with a literal or a plain character class, so
  every rule does one of: start with a literal; start with an ASCII class; or, for the
  case-insensitive keyword rules ("password", "token", ...), find candidates with
  `str.find` and run the regex anchored at each hit. Repeats are possessive or bounded, so
  no input backtracks badly. Each rule is skipped unless one of its needles is present.
- A regex finds candidates and a small validator decides: Luhn for cards, mod-97 for IBANs,
  entropy and "is this a placeholder or code?" for assignments. Simple patterns, few false
  positives.
- Standard library only: the hook client imports this and must start fast.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Literal

PiiMode = Literal["off", "flag", "redact"]

SECRET_KINDS: tuple[str, ...] = (
    "gcp_private_key", "private_key", "aws_access_key", "aws_secret_key", "google_api_key",
    "azure_storage_key", "azure_sas_signature", "github_token", "gitlab_token", "slack_token",
    "slack_webhook", "stripe_key", "anthropic_key", "openai_key", "npm_token", "jwt",
    "url_password", "basic_auth", "bearer_token", "secret_assignment", "high_entropy",
)
PII_KINDS: tuple[str, ...] = ("email", "phone", "card_number", "iban")

_MARK = "[REDACTED:"
# Only well-formed placeholders count as redacted: "[REDACTED: pw=hunter2]" shields nothing.
_PLACEHOLDER = re.compile(r"\[REDACTED:[a-z0-9_]{1,32}\]")


def placeholder(kind: str) -> str:
    """What replaces a finding: typed, so a reader still knows what stood there."""
    return f"{_MARK}{kind}]"


@dataclass(frozen=True)
class RedactionResult:
    text: str
    counts: dict[str, int] = field(default_factory=dict)  # kind -> replacements made
    pii_flags: dict[str, int] = field(default_factory=dict)  # kind -> PII seen, left in place

    @property
    def total(self) -> int:
        return sum(self.counts.values())


def merge_counts(*counts: Mapping[str, int]) -> dict[str, int]:
    """Sum per-kind counts (content, metadata, chunks) into one report."""
    out: dict[str, int] = {}
    for c in counts:
        for kind, n in c.items():
            if n:
                out[kind] = out.get(kind, 0) + n
    return out


# --------------------------------------------------------------------------------------------
# Value heuristics: is an assigned value a real secret, or a placeholder, a path, some code?

_BENIGN_WORDS = frozenset({
    "none", "null", "nil", "true", "false", "undefined", "empty", "yes", "no", "on", "off",
    "required", "optional", "string", "str", "bytes", "int", "bool", "any", "object", "unknown",
    "redacted", "hidden", "masked", "secret", "secrets", "password", "passwd", "token", "tokens",
    "key", "keys", "apikey", "api_key", "changeme", "example", "sample", "test", "dummy",
    "placeholder", "default", "value", "auto", "env", "include", "omit", "same-origin", "basic",
    "bearer", "digest",
})
_BENIGN_INSIDE = re.compile(
    r"your[_\-]?|placeholder|example|changeme|change[_\-]me|replace[_\-]?me|x{5,}|\.\.\.|…"
    r"|%s|%\(|\{\{|\$\{|\{[A-Za-z_]*\}",
    re.IGNORECASE,
)
_ENV_NAME = re.compile(r"[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+")
_IDENT_PATH = re.compile(r"[A-Za-z_$][\w$]*(?:\??\.[A-Za-z_$][\w$]*)*")
_NUMBER = re.compile(r"[+-]?[0-9]+(?:\.[0-9]+)?")
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_HEX = re.compile(r"[0-9a-fA-F]+")
_SLUG = re.compile(r"[a-z0-9]+(?:[\-_.:/][a-z0-9]+)+")
_WS = re.compile(r"\s")
_CAMEL_HUMP = re.compile(r"[A-Z][a-z]{2,}")


def _is_benign(value: str) -> bool:
    """Placeholders, templates, env-var references, paths and URLs are not secrets."""
    if not value or _PLACEHOLDER.search(value):
        return True
    if value[0] in "$%<{[!:*@&#" or len(set(value)) == 1:
        return True
    if value.lower() in _BENIGN_WORDS or _BENIGN_INSIDE.search(value):
        return True
    if _ENV_NAME.fullmatch(value):  # "token": "GITHUB_TOKEN" names a variable
        return True
    if value.startswith(("/", "./", "../", "~/", "\\\\")) or "://" in value:
        return True
    return len(value) > 2 and value[1] == ":" and value[2] in "\\/"  # C:\path


def shannon_entropy(value: str) -> float:
    """Bits per character of the string's own character distribution."""
    n = len(value)
    return -sum(c / n * math.log2(c / n) for c in Counter(value).values()) if n else 0.0


@lru_cache(maxsize=2048)
def _random_entropy(length: int, alphabet: int) -> float:
    """Expected Shannon entropy of a uniformly random string (exact, over the binomial counts).

    A short random string cannot reach log2(alphabet) bits: 16 random base64 characters
    average 3.75 bits, not 6. Comparing against this, instead of one fixed threshold, keeps
    recall for 16-24 character keys without flagging longer identifiers.
    """
    p = 1 / alphabet
    acc = 0.0
    for c in range(1, length + 1):
        pr = math.comb(length, c) * p**c * (1 - p) ** (length - c)
        acc += pr * (c / length) * math.log2(c / length)
    return -alphabet * acc


def _alphabet(value: str) -> int:
    return (26 * any(c.islower() for c in value) + 26 * any(c.isupper() for c in value)
            + 10 * any(c.isdigit() for c in value) + 4 * any(not c.isalnum() for c in value))


def _looks_random(value: str) -> bool:
    """Random-looking for its alphabet, and not a harmless shape (SHA-1, UUID, slug, words).

    Calibrated on random tokens vs. identifiers, versions, paths and MIME types: detects
    80-95% of random 16-24 character tokens and 93-100% from 32 characters on.
    """
    n = len(value)
    if n < 16 or len(set(value)) < min(10, n // 2) or _WS.search(value) or _is_benign(value):
        return False
    if _UUID.fullmatch(value) or _SLUG.fullmatch(value):
        return False
    if _HEX.fullmatch(value):
        # 40 hex is a git commit / SHA-1 far more often than a key; other hex keys count.
        return n >= 20 and n != 40 and shannon_entropy(value) >= 3.0
    if "=" in value.rstrip("=") or ";" in value or "," in value:  # max-age=1, a;b: not tokens
        return False
    if value.count(".") > 1 or ("." in value and "/" in value):  # hosts, versions, paths
        return False
    if not any(c.isdigit() for c in value) or not any(c.isalpha() for c in value):
        return False
    # Words glued together, not random letters: pronounceable (about 40% vowels against 19%
    # for random letters), or CamelCase humps covering half of it ("PKCS7PrivateKeyTypes").
    letters = [c for c in value.lower() if c.isalpha()]
    if len(letters) >= 8 and sum(c in "aeiou" for c in letters) >= 0.38 * len(letters):
        return False
    humps = [h for h in _CAMEL_HUMP.findall(value) if any(c in "aeiou" for c in h[1:])]
    if len(humps) >= 2 and sum(map(len, humps)) >= n / 2:
        return False
    return shannon_entropy(value) >= _random_entropy(min(n, 256), _alphabet(value)) - 0.35


def _machine_like(value: str) -> bool:
    """Tokens and API keys are generated: they have digits, mixed case, or sheer length.

    Slugs of words ("auth-request-type/at") are names, not generated values.
    """
    if len(value) < 8 or (_SLUG.fullmatch(value) and sum(c.isdigit() for c in value) <= 2):
        return False
    has_digit = any(c.isdigit() for c in value)
    mixed = any(c.isupper() for c in value) and any(c.islower() for c in value)
    return has_digit or len(value) >= 20 or (mixed and len(value) >= 12)


# --------------------------------------------------------------------------------------------
# Rule machinery

Span = tuple[int, int, str]
Check = Callable[[re.Match[str], str], bool]


@dataclass(frozen=True)
class _Rule:
    """One detector: `find` yields spans; `needles` (lowercase) gate it cheaply."""

    kind: str
    # (text, text.lower() when `folds` else "", needles that may occur in the text)
    find: Callable[[str, str, frozenset[str]], Iterator[Span]]
    needles: tuple[str, ...]
    folds: bool = False  # searches case-insensitively, so needs the current lowercase text


def _scan(kind: str, pattern: str, needles: tuple[str, ...] = (), *, group: int | str = 0,
          check: Check | None = None) -> _Rule:
    """A rule whose pattern starts with a literal or an ASCII class: plain `finditer`."""
    rx = re.compile(pattern)

    def find(text: str, _low: str, _present: frozenset[str]) -> Iterator[Span]:
        for m in rx.finditer(text):
            if check is None or check(m, text):
                yield m.start(group), m.end(group), kind

    return _Rule(kind, find, needles)


def _positions(text: str, low: str, needles: tuple[str, ...], fold: bool) -> list[int]:
    """Where any needle occurs, case-insensitively with `fold`.

    Folded search runs on `low` when it aligns with `text` (lower() kept every character one
    character long, as it does for ASCII); otherwise on lower, Capitalized and UPPER forms.
    """
    if fold and len(low) == len(text):
        hay, variants = low, {n.lower() for n in needles}
    elif fold:
        hay, variants = text, {v for n in needles for v in (n, n.capitalize(), n.upper())}
    else:
        hay, variants = text, set(needles)
    found: set[int] = set()
    for v in variants:
        i = hay.find(v)
        while i >= 0:
            found.add(i)
            i = hay.find(v, i + 1)
    return sorted(found)


def _anchored(kind: str, needles: tuple[str, ...], pattern: str, *, fold: bool = False,
              group: int | str = 0, check: Check | None = None) -> _Rule:
    """A rule matched only where a needle occurs: `re` cannot skip ahead on `(?i:...)`."""
    rx = re.compile(pattern)

    lowered = tuple(n.lower() for n in needles)

    def find(text: str, low: str, present: frozenset[str]) -> Iterator[Span]:
        end = -1
        live = tuple(n for n, n_low in zip(needles, lowered) if n_low in present)
        for p in _positions(text, low, live, fold):
            if p < end or (m := rx.match(text, p)) is None:
                continue
            if check is None or check(m, text):
                end = m.end()
                yield m.start(group), m.end(group), kind

    return _Rule(kind, find, lowered, fold)


def _not_benign(group: int | str) -> Check:
    return lambda m, _t: not _is_benign(m.group(group))


def _token(prefix: str, body: str, left: str = r"A-Za-z0-9_\-") -> str:
    """`prefix` + `body`, not preceded by a token character. The lookbehind comes after the
    first literal so `re` can still jump straight to candidates."""
    first = re.escape(prefix[0])
    return rf"{first}(?<![{left}]{first}){re.escape(prefix[1:])}{body}"


_KEY_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-")


def _key_prefix(text: str, kw_start: int) -> str:
    """The part of an identifier before its keyword (`GITHUB_` of `GITHUB_TOKEN`, `--`)."""
    i = kw_start
    while i > 0 and kw_start - i < 64 and text[i - 1] in _KEY_CHARS:
        i -= 1
    return text[i:kw_start]


# --------------------------------------------------------------------------------------------
# Validators


def _luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


_CARD_IIN = re.compile(r"4|5[1-5]|2[2-7]|3[47]|3[0689]|6(?:011|5|4[4-9]|2)|35")


_DIGIT_RUN = re.compile(r"[0-9](?<![\w.\-+][0-9])[0-9]*+(?:[ \-][0-9]++)*+")


def _card_window(groups: list[str], seps: list[str]) -> bool:
    """Card-like grouping: one block, or 4-4-4-4(-3), 4-6-5 (Amex), 4-6-4 (Diners)."""
    if len(groups) == 1:
        return True
    return (len(set(seps)) == 1 and len(groups[0]) == 4 and len(groups[-1]) >= 3
            and all(4 <= len(g) <= 6 for g in groups[1:-1]))


def _find_cards(text: str, _low: str, _present: frozenset[str]) -> Iterator[Span]:
    """Card numbers inside runs of digit groups: issuer prefix, grouping, and Luhn.

    A run is split into its groups and each window of 13-19 digits is tried, so a card
    followed by more numbers ("4111 1111 1111 1111 123") is still found, the same way
    whether or not its neighbours were redacted first.
    """
    for m in _DIGIT_RUN.finditer(text):
        raw = m.group()
        if len(raw) < 13:
            continue
        parts = re.split(r"([ \-])", raw)
        groups, seps = parts[0::2], parts[1::2]
        offsets = [m.start()]
        for g, sep in zip(groups, seps):
            offsets.append(offsets[-1] + len(g) + len(sep))
        i = 0
        while i < len(groups):
            best, total = -1, 0
            for j in range(i, len(groups)):
                total += len(groups[j])
                if total > 19:
                    break
                if total >= 13 and _card_window(groups[i : j + 1], seps[i:j]):
                    digits = "".join(groups[i : j + 1])
                    if _CARD_IIN.match(digits) and _luhn_ok(digits):
                        best = j
            if best < 0:
                i += 1
                continue
            yield offsets[i], offsets[best] + len(groups[best]), "card_number"
            i = best + 1


_IBAN_LENGTHS = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22,
    "BR": 29, "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DK": 18, "DO": 28, "EE": 20,
    "EG": 29, "ES": 24, "FI": 18, "FO": 18, "FR": 27, "GB": 22, "GE": 22, "GI": 23, "GL": 18,
    "GR": 27, "GT": 28, "HR": 21, "HU": 28, "IE": 22, "IL": 23, "IQ": 23, "IS": 26, "IT": 27,
    "JO": 30, "KW": 30, "KZ": 20, "LB": 28, "LC": 32, "LI": 21, "LT": 20, "LU": 20, "LV": 21,
    "MC": 27, "MD": 24, "ME": 22, "MK": 19, "MR": 27, "MT": 31, "MU": 30, "NL": 18, "NO": 15,
    "PK": 24, "PL": 28, "PS": 29, "PT": 25, "QA": 29, "RO": 24, "RS": 22, "SA": 24, "SC": 31,
    "SE": 24, "SI": 19, "SK": 24, "SM": 27, "TN": 24, "TR": 26, "UA": 29, "VG": 24, "XK": 20,
}


_IBAN_TAIL = re.compile(r"[0-9](?<=[A-Z][A-Z][0-9])[0-9](?: ?[A-Z0-9]){11,30}(?![A-Za-z0-9])")


def _find_ibans(text: str, _low: str, _present: frozenset[str]) -> Iterator[Span]:
    """Country length, 4-character groups if spaced, and mod-97 == 1.

    Anchored on the check digits: digits are far rarer than the capitals an IBAN starts with.
    """
    for m in _IBAN_TAIL.finditer(text):
        start = m.start() - 2
        if start and text[start - 1].isalnum():
            continue
        raw = text[start : m.end()]
        iban = raw.replace(" ", "")
        if _IBAN_LENGTHS.get(iban[:2]) != len(iban):
            continue
        if " " in raw and any(len(g) != 4 for g in raw.split(" ")[:-1]):
            continue
        if int("".join(str(int(c, 36)) for c in iban[4:] + iban[:4])) % 97 == 1:
            yield start, m.end(), "iban"


_FILE_TLDS = frozenset({
    "png", "jpg", "jpeg", "gif", "svg", "webp", "ico", "bmp", "tif", "tiff", "js", "mjs", "cjs",
    "ts", "tsx", "jsx", "css", "scss", "py", "md", "json", "yaml", "yml", "toml", "txt", "lock",
    "map", "wasm",
})
_LOCAL_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._%+-")
_EMAIL_AT = re.compile(r"@(?<=[A-Za-z0-9._%+\-]@)[A-Za-z0-9\-]++(?:\.[A-Za-z0-9\-]++)++")


def _find_emails(text: str, _low: str, _present: frozenset[str]) -> Iterator[Span]:
    """Anchored at '@' (rare) and read backwards: a forward regex would start at every word."""
    last_end = 0
    for m in _EMAIL_AT.finditer(text):
        at, domain = m.start(), m.group()[1:]
        tld = domain.rsplit(".", 1)[-1]
        if not (tld.isalpha() and 2 <= len(tld) <= 24) or tld.lower() in _FILE_TLDS:
            continue
        if re.match(r"[0-9]+x\.", domain):  # icon@2x.png
            continue
        start = at
        while start > last_end and at - start < 64 and text[start - 1] in _LOCAL_CHARS:
            start -= 1
        while start < at and text[start] in ".+-":
            start += 1
        if start == at or (start > last_end and text[start - 1] in _LOCAL_CHARS):
            continue
        nxt = text[m.end() : m.end() + 2]
        # git@github.com:org/repo.git and ssh://git@host/path address repositories, not people.
        if nxt[:1] == "/" or (nxt[:1] == ":" and nxt[1:2] not in ("", " ", "\n")):
            continue
        last_end = m.end()
        yield start, m.end(), "email"


def _intl_phone_ok(m: re.Match[str], text: str) -> bool:
    raw = m.group()
    digits = sum(c.isdigit() for c in raw)
    if not 10 <= digits <= 15 or raw.count("(") != raw.count(")"):
        return False
    after = text[m.end() : m.end() + 1]
    return not (after.isalnum() or after in "_/")


def _us_phone_ok(m: re.Match[str], _text: str) -> bool:
    """NANP rules: area code and exchange start 2-9; one separator style throughout."""
    raw = m.group()
    digits = "".join(c for c in raw if c.isdigit())[-10:]
    seps = set() if raw.startswith("(") else {c for c in raw if c in ".-"}
    return len(seps) <= 1 and digits[0] in "23456789" and digits[3] in "23456789"


def _openai_ok(m: re.Match[str], _text: str) -> bool:
    body = m.group()[3:]
    return any(c.isdigit() for c in body) and any(c.isalpha() for c in body)


def _bearer_ok(m: re.Match[str], _text: str) -> bool:
    v = m.group("v")
    if _is_benign(v):
        return False
    return any(c.isdigit() for c in v) or len(v) >= 20 or v != v.lower()


def _url_password_ok(m: re.Match[str], _text: str) -> bool:
    return not _is_benign(m.group(2)) and m.group(2).lower() not in ("pass", "pwd", "pw")


def _basic_cli_ok(m: re.Match[str], _text: str) -> bool:
    user, pw = m.group(1), m.group(2)
    if user.isdigit() and pw.isdigit():  # docker run -u 1000:1000
        return False
    return not _is_benign(pw)


def _aws_secret_ok(m: re.Match[str], text: str) -> bool:
    """Only AWS names: a Django SECRET_KEY of 40 chars is a `secret_assignment`."""
    key = (_key_prefix(text, m.start()) + m.group("kw")).lower()
    return "aws" in key or "access" in key


# --------------------------------------------------------------------------------------------
# PEM blocks


_PEM_BEGIN = re.compile(r"-----BEGIN[A-Z0-9 ]{0,40}PRIVATE KEY(?: BLOCK)?-----")
_PEM_END = re.compile(r"-----END[A-Z0-9 ]{0,40}PRIVATE KEY(?: BLOCK)?-----")
_PEM_BODY = re.compile(r"[A-Za-z0-9+/=:,\-\s\\]*+")  # base64, headers, real or escaped newlines
_KEY_MATERIAL = re.compile(r"[A-Za-z0-9+/]{16}")
_PEM_TAIL = re.compile(  # base64 lines and "Proc-Type: ..." headers, real or escaped newlines
    r"(?:(?:\\n|\r?\n)(?:[A-Za-z0-9+/=]{16,}+|[A-Za-z][A-Za-z\-]*+:[^\n\\]*+))*+"
)


def _find_pem(text: str, _low: str, _present: frozenset[str]) -> Iterator[Span]:
    """BEGIN through END; a truncated key (no END) through its base64 and header lines.

    The body must look like key material: code that names the markers as constants (a PEM
    parser) holds no key. By hand, because one lazy regex would re-read the whole tail for
    every BEGIN without an END.
    """
    pos = 0
    while m := _PEM_BEGIN.search(text, pos):
        nxt = _PEM_BEGIN.search(text, m.end())
        end_m = _PEM_END.search(text, m.end(), nxt.start() if nxt else len(text))
        if end_m and _PEM_BODY.fullmatch(text, m.end(), end_m.start()):
            end = end_m.end()
        else:
            tail = _PEM_TAIL.match(text, m.end())  # always matches: it may match nothing
            end = tail.end() if tail else m.end()
        if _KEY_MATERIAL.search(text, m.end(), end):
            yield m.start(), end, "private_key"
        pos = max(end, m.end())


# --------------------------------------------------------------------------------------------
# `<key> <sep> <value>` assignments in code, config, env files and headers


# Key names (lowercased, alphanumerics only) whose value is a secret whatever it looks like.
_STRONG_ENDINGS = (
    "password", "passwd", "passphrase", "secret", "token", "apikey", "accesskey", "privatekey",
    "secretkey", "masterkey", "encryptionkey", "signingkey",
)
_PASSWORD_ENDINGS = ("password", "passwd", "passphrase", "pass", "pwd")
# Keywords that are words elsewhere ("bypass", "monkey", "author"): they count only at the
# start of an identifier part. "pass"/"pwd" are then strong; the rest need a random value.
_BOUNDARY_STRONG = frozenset({"pass", "pwd"})
_WEAK = frozenset(
    {"key", "salt", "signature", "sig", "cookie", "credential", "credentials", "auth",
     "authorization", "hmac", "session", "sessionid"}
)
_ASSIGN_ROOTS = ("pass", "pwd", "secret", "token", "key", "salt", "sig", "cookie", "credential",
                 "auth", "hmac", "session")
_BARE = r"""[^\s"'`,;(){}\[\]<>]"""  # an unquoted value's characters
_QUOTED = r"""[rRbBuUfF]{0,2}"(?:[^"\\\n]++|\\.)*+"|[rRbBuUfF]{0,2}'(?:[^'\\\n]++|\\.)*+'"""
_ASSIGN = (
    r"(?P<kw>(?i:password|passwd|passphrase|pass|pwd|secret|token|key|salt|signature|sig"
    r"|cookie|credentials?|authorization|auth|hmac|session(?:[_\-]?id)?))"
    r"""(?:["']\]?)?"""
    r"(?P<sep>[ \t]*(?:=>|:=|==|=|:(?![:/\\])"
    r"(?:[ \t]*[A-Za-z_][\w.\[\]| ,]{0,40}?[ \t]*=(?!=))?)[ \t]*)"  # `password: str = "..."`
    rf"""(?P<val>{_QUOTED}|{_BARE}{{1,256}}+)"""
)
_BARE_RUN = re.compile(rf"{_BARE}*+")


_WORDS_ONLY = re.compile(r"[A-Za-z][A-Za-z_\-. ]*")


def _is_label(value: str, kw: str) -> bool:
    """"challengePassword", "current-password", "Token": words naming the field, not its
    value. A value with digits ("Password123!") is still a password."""
    return kw.lower() in value.lower() and _WORDS_ONLY.fullmatch(value) is not None


def _word_start(text: str, kw_start: int, kw: str) -> bool:
    """The keyword starts an identifier part: `db_pass`, `dbPass`, `DB-KEY`, not `bypass`."""
    prev = text[kw_start - 1] if kw_start else ""
    return not prev.isalnum() or (kw[0].isupper() and (prev.islower() or prev.isdigit()))


def _classify_assignment(m: re.Match[str], text: str) -> Span | None:
    """Decide whether `<key> <sep> <value>` holds a secret, and which characters to replace."""
    kw = m.group("kw")
    kw_low = kw.lower().replace("_", "").replace("-", "")
    key = _key_prefix(text, m.start()) + kw
    norm = "".join(c for c in key.lower() if c.isalnum())
    if norm.endswith(_STRONG_ENDINGS):
        strong = True
    elif kw_low in _BOUNDARY_STRONG or kw_low in _WEAK:
        if not _word_start(text, m.start(), kw) or key == "PWD":  # $PWD: working directory
            return None
        strong = kw_low in _BOUNDARY_STRONG
    else:
        return None
    head = m.start() - (len(key) - len(kw))
    if "public" in norm or text[max(0, head - 2) : head].endswith(("$", "${")):
        return None  # a public key, or a variable reference: $TOKEN, ${DB_PASSWORD:?unset}
    raw = m.group("val")
    v_start, v_end = m.start("val"), m.end("val")
    lead = len(raw) - len(raw.lstrip("rRbBuUfF"))
    in_query = False
    quoted = len(raw) - lead >= 2 and raw[lead] in "\"'" and raw[-1] == raw[lead]
    if quoted:
        value, v_start, v_end = raw[lead + 1 : -1], v_start + lead + 1, v_end - 1
        if "f" in raw[:lead].lower() and "{" in value:
            return None
        if _WS.search(value):  # prose and messages: "Password must be 8 characters"
            return None
    else:
        value = raw.rstrip(":.,")  # `if token == END:` and sentences end in punctuation
        v_end -= len(raw) - len(value)
        in_query = head > 0 and text[head - 1] in "?&"
        if in_query:  # URL query: the value ends at the next parameter
            cut = min((i for i in (value.find("&"), value.find("#")) if i >= 0), default=-1)
            if cut >= 0:
                value, v_end = value[:cut], v_start + cut
        if text[v_end : v_end + 1] in ("(", "["):  # a call or a subscript: code
            return None
        if m.group("sep").strip() == ":" and _IDENT_PATH.fullmatch(value):
            # A typed parameter or field: `private_key: PKCS7PrivateKeyTypes,`, `key: T | None`
            if text[v_end : v_end + 3].lstrip(" ")[:1] in (",", ")", "}", "|", "="):
                return None
    if not strong:
        kind, ok = "high_entropy", _looks_random(value)
    elif _is_benign(value) or _is_label(value, kw):
        return None
    else:
        kind = "secret_assignment"
        # SHELL_VAR=value, --flag=value, ?token=value, INI/.properties `db.password=value` at
        # a line start, `;Password=value;` in a connection string: a literal, never code.
        line_start = head == 0 or text[head - 1] in "\n;"
        env_style = not quoted and (
            in_query or key.startswith("-")
            or ((key.isupper() or line_start) and m.group("sep") == "=")
        )
        if not quoted:
            # `token = next_token`, `apiKey: config.apiKey!`, `t = imdsv2_token`; but
            # `password: hunter2` (a digit, no dot or underscore) reads as a value.
            bare = value.rstrip("!")
            looks_code = _IDENT_PATH.fullmatch(bare) is not None and (
                "." in bare or "_" in bare.strip("_") or not any(c.isdigit() for c in bare)
            )
            if not env_style and (looks_code or _NUMBER.fullmatch(value)):
                return None  # `password: str`, `token = next_token`, `secret: 42`
            if env_style and looks_code and "." in value:
                return None  # PASSWORD=settings.db_password
            if _NUMBER.fullmatch(value) and len(value) < 4:
                return None
        if norm.endswith(_PASSWORD_ENDINGS):
            ok = len(value) >= 4
        else:  # tokens and keys are generated; a short or plain word is something else
            ok = _machine_like(value) or (env_style and len(value) >= 6)
    if not ok:
        return None
    if not quoted and len(raw) == 256 and v_end == m.end("val"):
        # The regex reads at most 256 characters so that no input rescans a long run for
        # every keyword in it: judge on those, then redact the whole run.
        run = _BARE_RUN.match(text, v_end)  # always matches: it may match nothing
        v_end = run.end() if run else v_end
    return v_start, v_end, kind


_ASSIGN_RX = re.compile(_ASSIGN)


def _find_assignments(text: str, low: str, present: frozenset[str]) -> Iterator[Span]:
    """`<key> <sep> <value>` at each keyword hit; `_classify_assignment` decides."""
    end = -1
    for p in _positions(text, low, tuple(r for r in _ASSIGN_ROOTS if r in present), True):
        if p < end or (m := _ASSIGN_RX.match(text, p)) is None:
            continue
        span = _classify_assignment(m, text)
        if span is not None:
            end = span[1]
            yield span
        elif len(val := m.group("val")) >= 64 and not any(c in val for c in "\"'&#;"):
            # A long bare run that is no secret: keywords inside it ("key=key=key=...") are
            # not evaluated one by one, which keeps keyword-stuffed input linear and cheap.
            end = m.end("val")


_FLAG = re.compile(
    r"-(?<![\w\-]-)-?(?:[A-Za-z0-9]++-)*?"
    r"(?P<kw>(?i:password|passwd|pass|token|secret|api-?key|access-key|secret-key"
    r"|client-secret|auth-token))"
    rf"""[ \t]++(?P<val>{_QUOTED}|[^\s"'`;|&<>()]++)"""
)


def _find_flags(text: str, _low: str, _present: frozenset[str]) -> Iterator[Span]:
    """`--password xyz`, `--token "..."`: a CLI flag whose next word is the secret."""
    for m in _FLAG.finditer(text):
        raw, s, e = m.group("val"), m.start("val"), m.end("val")
        if raw[:1] in "\"'":
            raw, s, e = raw[1:-1], s + 1, e - 1
        elif raw.startswith("-"):  # the next flag: this one took no value
            continue
        elif raw.isalpha() and raw.islower():
            # "use the --token flag to ..." is prose; a bare word ending a command line is
            # not, nor one before the next flag unless it reads as a word ("--x-password
            # requires --y"): plain-word passwords there are missed, prose is not redacted.
            rest = text[e : e + 8].lstrip(" \t")
            if rest and rest[0] not in "\n\r-|\\;&":
                continue
            vowels = sum(c in "aeiou" for c in raw)
            if rest[:1] == "-" and len(raw) >= 5 and vowels >= 0.3 * len(raw):
                continue
        if _is_benign(raw) or raw.lower() == m.group("kw").lower():
            continue
        yield s, e, "secret_assignment"


_XML = re.compile(r"<(?P<tag>[A-Za-z][\w.:\-]{0,40})>(?P<v>[^<>\s]{1,256})</(?P=tag)>")


def _find_xml(text: str, _low: str, _present: frozenset[str]) -> Iterator[Span]:
    """`<password>...</password>`, `<apiKey>...</apiKey>`: Maven settings, app configs."""
    for m in _XML.finditer(text):
        tag = "".join(c for c in m.group("tag").lower() if c.isalnum())
        value = m.group("v")
        if not tag.endswith(_STRONG_ENDINGS) or "public" in tag or _is_benign(value):
            continue
        if len(value) >= 4 if tag.endswith(_PASSWORD_ENDINGS) else _machine_like(value):
            yield m.start("v"), m.end("v"), "secret_assignment"


_NETRC = re.compile(  # .netrc: machine HOST login USER password SECRET
    r"(?:machine[ \t]+\S+|default)(?:[ \t]+(?:login|account)[ \t]+\S+)+"
    r"[ \t]+password[ \t]+(?P<v>\S+)"
)


# --------------------------------------------------------------------------------------------
# The rules, in order: most specific first.

_B64U = r"[A-Za-z0-9_\-]"

_SECRET_RULES: tuple[_Rule, ...] = (
    _scan("gcp_private_key", r'"private_key"[ \t]*:[ \t]*"(-----BEGIN[^"]*+)"',
          ('"private_key"',), group=1, check=lambda m, _t: bool(_KEY_MATERIAL.search(m[1]))),
    _Rule("private_key", _find_pem, ("-----begin",)),
    _anchored("aws_access_key", ("AKIA", "ASIA", "ABIA", "ACCA"),
              r"(?<![A-Za-z0-9])A[A-Z]{3}[A-Z0-9]{16}(?![A-Za-z0-9])"),
    _anchored("aws_secret_key", ("secret",),
              r"(?P<kw>(?i:secret[_\-]?(?:access[_\-]?)?key))(?:[\"']\]?)?[ \t]*(?:=>|:=|=|:)"
              r"[ \t]*[\"']?(?P<v>[A-Za-z0-9/+]{40})(?![A-Za-z0-9/+=])",
              fold=True, group="v", check=_aws_secret_ok),
    _scan("google_api_key", _token("AIza", r"[0-9A-Za-z_\-]{35}(?![0-9A-Za-z_\-])"), ("aiza",)),
    _anchored("azure_storage_key", ("AccountKey=", "SharedAccessKey="),
              r"[A-Za-z]+=(?P<v>[A-Za-z0-9+/]{20,}+={0,2})", group="v"),
    _anchored("azure_sas_signature", ("sig=",), r"(?<=[?&;])sig=(?P<v>[A-Za-z0-9%+/=]{16,}+)",
              group="v"),
    _scan("github_token", _token("gh", r"[pousr]_[A-Za-z0-9]{30,}+(?![A-Za-z0-9_])"), ("gh",)),
    _scan("github_token", _token("github_pat_", r"[A-Za-z0-9_]{22,}+"), ("github_pat_",)),
    _scan("gitlab_token",
          _token("gl", r"(?:pat|dt|ptt|rt|soat|oas|cbt|imt|ft|agent|ffct)-[A-Za-z0-9_\-]{20,}+"
                       r"(?:\.[A-Za-z0-9_\-]++)*+"), ("gl",)),
    _scan("slack_webhook",
          r"hooks\.slack\.com/(?:services|workflows|triggers)/(?P<v>[A-Za-z0-9_/\-]{20,}+)",
          ("hooks.slack.com",), group="v"),
    _anchored("slack_token", ("xox", "xapp-"),
              r"(?<![A-Za-z0-9_\-])(?:xox[abposre]|xapp)-[A-Za-z0-9\-]{10,}+",
              check=lambda m, _t: any(c.isdigit() for c in m.group())),
    _anchored("stripe_key", ("sk_live_", "rk_live_", "sk_test_", "rk_test_", "whsec_"),
              r"(?<![A-Za-z0-9_])"
              r"(?:[sr]k_(?:live|test)_[A-Za-z0-9]{16,}+|whsec_[A-Za-z0-9]{24,}+)"),
    _scan("anthropic_key", _token("sk-ant-", r"[A-Za-z0-9_\-]{20,}+"), ("sk-ant-",)),
    _scan("openai_key", _token("sk-", r"[A-Za-z0-9_\-]{20,}+"), ("sk-",), check=_openai_ok),
    _scan("npm_token", _token("npm_", r"[A-Za-z0-9]{36}(?![A-Za-z0-9_])"), ("npm_",)),
    _scan("jwt", _token("eyJ", rf"{_B64U}{{8,}}+\.{_B64U}{{8,}}+\.{_B64U}*+"), ("eyj",)),
    _scan("url_password", r"://([^\s:/?#@\[\]\"'<>]{0,256}):([^\s/@\[\]\"'<>]{1,256})@",
          ("://",), group=2, check=_url_password_ok),
    _anchored("basic_auth", ("authorization",),
              r"(?i:authorization)[\"']?[ \t]*[:=][ \t]*[\"']?(?i:basic)[ \t]+"
              r"(?P<v>[A-Za-z0-9+/]{6,}+={0,2})", fold=True, group="v", check=_not_benign("v")),
    _scan("basic_auth", r"-(?<![\w\-]-)(?:u|-user)[ \t]+[\"']?([^\s:\"'$]++):([^\s\"']++)",
          ("-u", "--user"), group=2, check=_basic_cli_ok),
    _anchored("bearer_token", ("bearer",),
              r"(?<![A-Za-z0-9_])(?i:bearer)[ \t]+(?P<v>[A-Za-z0-9\-._~+/]{8,}+=*)",
              fold=True, group="v", check=_bearer_ok),
    _Rule("secret_assignment", _find_flags, ("-",)),
    _Rule("secret_assignment", _find_xml, ("</",)),
    _anchored("secret_assignment", ("machine", "default"), _NETRC, group="v",
              check=_not_benign("v")),
    _Rule("secret_assignment", _find_assignments, _ASSIGN_ROOTS, folds=True),
)

_PII_RULES: tuple[_Rule, ...] = (
    _Rule("email", _find_emails, ("@",)),
    _Rule("card_number", _find_cards, ()),
    _Rule("iban", _find_ibans, ()),
    _scan("phone",
          r"\+(?<![\w+]\+)(?=[0-9][0-9 .\-()]{8})[0-9]++(?:[ .\-]?+\(?[0-9]++\)?)*+", ("+",),
          check=_intl_phone_ok),
    _scan("phone", r"[0-9](?<![\w.+\-/][0-9])(?:(?<=1)[.\-][0-9]{3}[.\-]|[0-9]{2}[.\-])"
                   r"[0-9]{3}[.\-][0-9]{4}(?![\w\-]|\.[0-9])", check=_us_phone_ok),
    _scan("phone", r"\((?<!\w\()[0-9]{3}\) ?[0-9]{3}[.\- ][0-9]{4}(?![\w\-]|\.[0-9])", ("(",),
          check=_us_phone_ok),
)


_NEEDLES = frozenset(n for rule in _SECRET_RULES + _PII_RULES for n in rule.needles)
_PLACEHOLDER_NEEDLES = frozenset(
    n for n in _NEEDLES if any(n in placeholder(k).lower() for k in SECRET_KINDS + PII_KINDS)
)


def _apply(rule: _Rule, text: str, low: str, present: frozenset[str], out: dict[str, int],
           *, replace: bool) -> str:
    """Run one rule; replace (or only count) its findings, never inside a placeholder."""
    parts: list[str] = []
    pos = 0
    for start, end, kind in rule.find(text, low, present):
        if start < pos or end <= start or _in_placeholder(text, start, end):
            continue
        out[kind] = out.get(kind, 0) + 1
        if replace:
            parts += (text[pos:start], placeholder(kind))
            pos = end
    if not parts:
        return text
    parts.append(text[pos:])
    return "".join(parts)


def _run(rules: tuple[_Rule, ...], text: str, present: frozenset[str], out: dict[str, int],
         *, replace: bool = True) -> str:
    """Apply `rules` in order, round and round, until each has run on the current text and
    found nothing (with `replace=False` the text never changes: one round that counts).

    That end state makes `redact(redact(x).text)` a no-op by construction, even where one
    replacement changes what another rule sees (a boundary character becomes `]`). A
    replacement shrinks the unredacted text, so this ends; rules after the last one that
    replaced have already seen the final text, so only those up to it run a second time.
    `present` (needles that may occur) only grows with placeholders, so gating stays exact:
    no needle contains a bracket, so none can straddle a placeholder's edge.
    """
    low: str | None = None
    clean = i = 0  # clean: rules in a row that ran on the current text and found nothing
    while clean < len(rules):
        rule = rules[i]
        i = (i + 1) % len(rules)
        if not rule.needles or not present.isdisjoint(rule.needles):
            if rule.folds and low is None:
                low = text.lower()
            new = _apply(rule, text, low or "", present, out, replace=replace)
            if new is not text:
                text, low, clean = new, None, 0
                present |= _PLACEHOLDER_NEEDLES
                continue
        clean += 1
    return text


def _in_placeholder(text: str, start: int, end: int) -> bool:
    """A finding overlapping a placeholder would re-redact redacted text."""
    if _MARK not in text[max(0, start - 42) : end]:
        return False
    return any(p.end() > start for p in _PLACEHOLDER.finditer(text, max(0, start - 42), end))


# --------------------------------------------------------------------------------------------
# Public API


class Redactor:
    """Redacts secrets always, and PII as `pii` says: "redact", "flag" (count only), "off"."""

    def __init__(self, pii: PiiMode = "redact"):
        if pii not in ("off", "flag", "redact"):
            raise ValueError(f"pii must be 'off', 'flag' or 'redact', not {pii!r}")
        self.pii: PiiMode = pii

    def redact(self, text: str) -> RedactionResult:
        """Replace secrets (and PII, by mode) with typed placeholders; see `_run`."""
        counts: dict[str, int] = {}
        low = text.lower()
        present = frozenset(n for n in _NEEDLES if n in low)
        rules = _SECRET_RULES + _PII_RULES if self.pii == "redact" else _SECRET_RULES
        text = _run(rules, text, present, counts)
        flags: dict[str, int] = {}
        if self.pii == "flag":
            _run(_PII_RULES, text, present, flags, replace=False)
        return RedactionResult(text, counts, flags)

    def redact_value(self, obj: Any) -> tuple[Any, dict[str, int]]:
        """Redact every string in a JSON-like value (metadata), dict keys included.

        A non-empty string under a secret-like key ("password", "apiKey", "authorization")
        is replaced whole: the key says what it is, whatever the value looks like.
        """
        counts: dict[str, int] = {}
        return self._value(obj, counts), counts

    def _value(self, obj: Any, counts: dict[str, int]) -> Any:
        if isinstance(obj, str):
            res = self.redact(obj)
            for kind, n in res.counts.items():
                counts[kind] = counts.get(kind, 0) + n
            return res.text
        if isinstance(obj, Mapping):
            out: dict[Any, Any] = {}
            for k, v in obj.items():
                key = self._value(k, counts) if isinstance(k, str) else k
                if isinstance(v, str) and v and is_secret_key(k) and not _is_placeholder(v):
                    counts["secret_assignment"] = counts.get("secret_assignment", 0) + 1
                    out[key] = placeholder("secret_assignment")
                else:
                    out[key] = self._value(v, counts)
            return out
        if isinstance(obj, list | tuple):
            items = [self._value(v, counts) for v in obj]
            return items if isinstance(obj, list) else tuple(items)
        return obj


_SECRET_KEY_ENDINGS = (
    "password", "passwd", "passphrase", "secret", "token", "apikey", "accesskey", "privatekey",
    "secretkey", "auth", "authorization", "credentials", "credential", "cookie", "sessionid",
)


def is_secret_key(key: Any) -> bool:
    """Whether a metadata key names a credential: `password`, `GITHUB_TOKEN`, `apiKey`..."""
    if not isinstance(key, str) or _PLACEHOLDER.search(key):
        return False
    return "".join(c for c in key.lower() if c.isalnum()).endswith(_SECRET_KEY_ENDINGS)


def _is_placeholder(value: str) -> bool:
    return _PLACEHOLDER.fullmatch(value) is not None


_DEFAULT = Redactor()


def redact(text: str) -> RedactionResult:
    """Redact with the default settings (secrets, and PII replaced)."""
    return _DEFAULT.redact(text)


def redact_value(obj: Any) -> tuple[Any, dict[str, int]]:
    """`Redactor().redact_value(obj)` with the default settings."""
    return _DEFAULT.redact_value(obj)
