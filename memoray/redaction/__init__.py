"""Secret and PII redaction, applied to everything an agent captures before it is stored.

Agent memory holds shell commands, config files, logs and prompts, which is exactly where
credentials leak. Storage keeps only the redacted text, so a leaked key never reaches disk,
an index, or another agent's context.

Design, and why:
- Rules run in a fixed order, most specific first, so a GitHub token is reported as
  `github_token`, not as the `secret_assignment` it also is. Each rule sees the previous
  rules' output and never matches inside a `[REDACTED:<kind>]` placeholder, so nothing is
  redacted twice. Rules repeat until none finds anything (see `engine._run`), so redacting
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
- Standard library only, so importing it stays cheap.
"""

from __future__ import annotations

from memoray.redaction.engine import (
    PiiMode,
    RedactionResult,
    Redactor,
    is_secret_key,
    merge_counts,
    redact,
    redact_value,
)
from memoray.redaction.heuristics import shannon_entropy
from memoray.redaction.pii_rules import PII_KINDS
from memoray.redaction.rules import placeholder
from memoray.redaction.secret_rules import SECRET_KINDS

__all__ = [
    "PII_KINDS", "SECRET_KINDS", "PiiMode", "RedactionResult", "Redactor", "is_secret_key",
    "merge_counts", "placeholder", "redact", "redact_value", "shannon_entropy",
]
