"""The engine: runs the rule tables over a text until nothing changes, and over JSON-like values."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from memoray.redaction.pii_rules import PII_KINDS, PII_RULES
from memoray.redaction.rules import MARK, PLACEHOLDER, Rule, placeholder
from memoray.redaction.secret_rules import SECRET_KINDS, SECRET_RULES

PiiMode = Literal["off", "flag", "redact"]


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


_NEEDLES = frozenset(n for rule in SECRET_RULES + PII_RULES for n in rule.needles)
_PLACEHOLDER_NEEDLES = frozenset(
    n for n in _NEEDLES if any(n in placeholder(k).lower() for k in SECRET_KINDS + PII_KINDS)
)


def _apply(rule: Rule, text: str, low: str, present: frozenset[str], out: dict[str, int],
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


def _run(rules: tuple[Rule, ...], text: str, present: frozenset[str], out: dict[str, int],
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
    if MARK not in text[max(0, start - 42) : end]:
        return False
    return any(p.end() > start for p in PLACEHOLDER.finditer(text, max(0, start - 42), end))


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
        rules = SECRET_RULES + PII_RULES if self.pii == "redact" else SECRET_RULES
        text = _run(rules, text, present, counts)
        flags: dict[str, int] = {}
        if self.pii == "flag":
            _run(PII_RULES, text, present, flags, replace=False)
        return RedactionResult(text, counts, flags)

    def redact_value(self, obj: Any) -> tuple[Any, dict[str, int]]:
        """Redact every string in a JSON-like value (metadata), dict keys included.

        Any non-empty value under a secret-like key ("password", "apiKey", "authorization") is
        replaced whole, a string, a number, a list or an object alike: the key says what it is,
        whatever the value looks like.
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
                if (is_secret_key(k) and v not in (None, "", [], {}) and not isinstance(v, bool)
                        and not (isinstance(v, str) and _is_placeholder(v))):
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
    if not isinstance(key, str) or PLACEHOLDER.search(key):
        return False
    return "".join(c for c in key.lower() if c.isalnum()).endswith(_SECRET_KEY_ENDINGS)


def _is_placeholder(value: str) -> bool:
    return PLACEHOLDER.fullmatch(value) is not None


_DEFAULT = Redactor()


def redact(text: str) -> RedactionResult:
    """Redact with the default settings (secrets, and PII replaced)."""
    return _DEFAULT.redact(text)


def redact_value(obj: Any) -> tuple[Any, dict[str, int]]:
    """`Redactor().redact_value(obj)` with the default settings."""
    return _DEFAULT.redact_value(obj)
