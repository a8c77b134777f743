"""Value heuristics: is an assigned value a real secret, or a placeholder, a path, some code?"""

from __future__ import annotations

import math
import re
from collections import Counter
from functools import lru_cache

from memoray.redaction.rules import PLACEHOLDER

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
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_HEX = re.compile(r"[0-9a-fA-F]+")
_SLUG = re.compile(r"[a-z0-9]+(?:[\-_.:/][a-z0-9]+)+")
WHITESPACE = re.compile(r"\s")
_CAMEL_HUMP = re.compile(r"[A-Z][a-z]{2,}")


def is_benign(value: str) -> bool:
    """Placeholders, templates, env-var references, paths and URLs are not secrets."""
    if not value or PLACEHOLDER.search(value):
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


def looks_random(value: str) -> bool:
    """Random-looking for its alphabet, and not a harmless shape (SHA-1, UUID, slug, words).

    Calibrated on random tokens vs. identifiers, versions, paths and MIME types: detects
    80-95% of random 16-24 character tokens and 93-100% from 32 characters on.
    """
    n = len(value)
    if n < 16 or len(set(value)) < min(10, n // 2) or WHITESPACE.search(value) or is_benign(value):
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


def machine_like(value: str) -> bool:
    """Tokens and API keys are generated: they have digits, mixed case, or sheer length.

    Slugs of words ("auth-request-type/at") are names, not generated values.
    """
    if len(value) < 8 or (_SLUG.fullmatch(value) and sum(c.isdigit() for c in value) <= 2):
        return False
    has_digit = any(c.isdigit() for c in value)
    mixed = any(c.isupper() for c in value) and any(c.islower() for c in value)
    return has_digit or len(value) >= 20 or (mixed and len(value) >= 12)
