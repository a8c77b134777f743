"""PII rules: e-mail addresses, phone numbers, card numbers (Luhn) and IBANs (mod-97)."""

from __future__ import annotations

import re
from collections.abc import Iterator

from memoray.redaction.rules import Rule, Span, scan

PII_KINDS: tuple[str, ...] = ("email", "phone", "card_number", "iban")


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


PII_RULES: tuple[Rule, ...] = (
    Rule("email", _find_emails, ("@",)),
    Rule("card_number", _find_cards, ()),
    Rule("iban", _find_ibans, ()),
    scan("phone",
         r"\+(?<![\w+]\+)(?=[0-9][0-9 .\-()]{8})[0-9]++(?:[ .\-]?+\(?[0-9]++\)?)*+", ("+",),
         check=_intl_phone_ok),
    scan("phone", r"[0-9](?<![\w.+\-/][0-9])(?:(?<=1)[.\-][0-9]{3}[.\-]|[0-9]{2}[.\-])"
                  r"[0-9]{3}[.\-][0-9]{4}(?![\w\-]|\.[0-9])", check=_us_phone_ok),
    scan("phone", r"\((?<!\w\()[0-9]{3}\) ?[0-9]{3}[.\- ][0-9]{4}(?![\w\-]|\.[0-9])", ("(",),
         check=_us_phone_ok),
)
