"""Find the decisions, conventions and preferences stated in a prompt or an assistant message.

No model: cue phrases, hedges and sentence shape. It runs inside `memoray hook` (stdlib only,
well under a millisecond per prompt). The aim is precision first: a sentence kept here becomes a
long-lived record that every later session may see, so a question, a hedge ("maybe we could...")
or a one-off request ("rename this") must not pass. Measured on tests/data/classify_sentences.tsv
(see benchmarks/bench_classify.py and tests/test_classify.py).

Kinds, and the record each becomes (see `RECORD`):
- decision: a choice about this project ("we keep the limiter in-process, never add Redis").
- convention: a standing rule of the codebase ("all DB access goes through the repository").
- preference: how the person wants the agent to work ("always show me the diff first").
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

Kind = Literal["decision", "convention", "preference"]
Source = Literal["prompt", "assistant"]

# kind -> (eventType, tier) of the record it becomes: all in the long-lived tiers
RECORD: dict[str, tuple[str, str]] = {
    "decision": ("decision", "project"),
    "convention": ("convention", "pattern"),
    "preference": ("preference", "preference"),
}

MIN_WORDS = 4
MAX_SENTENCE_CHARS = 400


@dataclass(frozen=True)
class Statement:
    kind: Kind
    text: str


def _rx(*parts: str) -> re.Pattern[str]:
    return re.compile("|".join(parts), re.IGNORECASE)


# Not a statement at all: questions, hedges, one-off chatter.
_QUESTION_START = _rx(r"^(?:why|what|how|where|when|which|who|is|are|do|does|did|can|could|"
                      r"would|will you|shall|should (?:we|i)|have you|has)\b")
_HEDGE = _rx(r"\bmaybe\b", r"\bperhaps\b", r"\bmight\b", r"\bi wonder\b", r"\bnot sure\b",
             r"\bwhat if\b", r"\bi think\b", r"\bprobably\b", r"\bconsider\b",
             r"\bat some point\b", r"\blet me (?:think|check|know)\b", r"\bnobody decided\b",
             r"\bcame up\b", r"\bone option\b", r"\byou could\b", r"\bwe could\b",
             r"\bif you want\b", r"\bnever mind\b")

# preference: the person tells the agent how to work with them
_PREF = _rx(
    r"\bI(?: really)? (?:prefer|like|love|hate|dislike|don'?t like|don'?t want|do not want)\b",
    r"\bI(?:'d| would) (?:rather|prefer|like)\b",
    r"\bmy preference\b", r"\byou prefer\b", r"^noted\b", r"^understood\b",
    r"^(?:please )?(?:always|never|don'?t(?: ever)?|do not|avoid|prefer)\b",
    r"^please (?:keep|use|write|stop|make sure|ask|tell|show|run)\b",
    r"^when in doubt\b",
    r"^from now on,? (?:please )?(?:run|use|ask|tell|show|keep|write|check)\b",
    r"^no \w+(?: \w+)? (?:left|please)\b",
    r"^(?:use|keep|write|avoid|prefer)\b.*\bplease\.?$",
)
# convention: a standing rule about the code, stated in the third person
_CONV = _rx(
    r"\bconvention\b", r"\bour rule\b", r"\bthe rule is\b", r"\bnaming\b",
    r"\b(?:all|every|each) [\w<>./-]+(?: [\w<>./-]+){0,2} (?:must|should|need|needs|goes|go|"
    r"lives?|are|is|carry|carries|come|comes|start|starts|follow|follows)\b",
    r"^(?!I\b|we\b|you\b|let)[\w\"'`<>./-]+(?: [\w\"'`<>./-]+){0,3} (?:must|must not|should|"
    r"should never|shall|never|always) (?!have been)\w+",
    r"\b(?:are|is) (?:numbered|upper_case|lower_case|snake_case|camelcase|kebab-case|"
    r"structured|utc|read once)\b",
    r"\b(?:use|uses|in) (?:snake_case|camelcase|kebab-case|pascalcase)\b",
    r"\b(?:live|lives|go|goes) (?:next to|in|under|at the top)\b",
    r"^[\w ]{3,40} (?:come|comes) from\b", r"^(?:new|public|private) \w+ (?:need|needs|must)\b",
    r"\bfollow(?:s|ing)? (?:the )?[\w<>/-]+(?: [\w<>/-]+)? (?:pattern|convention|format)\b",
    r"\bfollow [\w<>/-]*<", r"^we (?:always|name|never)\b", r"\bin this (?:codebase|project|repo)",
    r"\bthis (?:project|codebase|repository) (?:keeps|uses|always|never)\b",
    r"\bhere always\b", r"\bproject'?s pattern\b",
)
# decision: a choice made, usually against an alternative
_DECIDED = _rx(
    r"\b(?:we|I)(?:'ve| have)? (?:decided|agreed|chose|opted|settled on|made up my mind)\b",
    r"\b(?:we|I)(?:'re| are| will|'ll)? (?:going|go) with\b", r"\bwent with\b",
    r"\blet'?s (?:go with|use|keep|make|settle|not|stick|drop|move|switch|pin)\b",
    r"^(?:decision|decided)\b", r"\bdecision made\b", r"\bthat'?s final\b",
    r"\b(?:we|we'll|we will|we're|we are) (?:keep|keeping|use|using|switch|switching|move|"
    r"moving|drop|dropping|pin|shard|store|ship|write|run|go back|deprecate|not support|won'?t)\b",
    r"\bwe should (?:use|keep|move|drop|switch)\b",
    r"\b(?:stays?|remains?) (?:at|in|on|as)\b", r"\bstays\b", r"\bdefaults? to\b",
    r"^(?:use|go with|stick with|replace|switch to|drop|turn off|keep) .*\b(?:instead of|"
    r"rather than|over|not|entirely|with|no)\b",
    r"\bI want the\b.*\b(?:not|instead|rather)\b", r"\bno \w+ in this (?:service|project)\b",
    r"^no \w+ in\b", r"\bowns\b", r"^from now on\b", r"^going forward\b",
    r"\bnever (?:add|share|store)\b",
)
# an assistant's choice carries its reason or the alternative it rejected
_ASSISTANT_CHOICE = _rx(
    r"^I (?:went with|chose|opted|settled on|decided|switched|replaced|kept|moved)\b",
    r"^(?:decided|chose|opted) ", r"^rather than\b", r"\bnow (?:lives|uses|validate)",
    r"\bwe (?:now )?(?:use|validate)\b", r"\bthe fix uses\b", r"\bdecided against\b",
)
_REASON = _rx(r"\bbecause\b", r"\bsince\b", r"\bso that\b", r"\bso \w+", r"\brather than\b",
              r"\binstead of\b", r"\bover \w+", r"\bwhich\b", r", not\b", r"\bagainst\b",
              r"\bbefore\b")

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[\"'`(\[]?[A-Z0-9])")
_LIST_MARK = re.compile(r"^\s*(?:[-*+>]|\d{1,3}[.)])\s+")
_CODE = re.compile(r"^\s*(?:\$ |```|>>>|def |class |import |from \S+ import )")


def sentences(text: str) -> list[str]:
    """Sentences of a prompt or message: one per line item, split at sentence ends; fenced code
    blocks skipped."""
    out: list[str] = []
    in_fence = False
    for line in text.splitlines():
        if line.strip().startswith(("```", "~~~")):
            in_fence = not in_fence
            continue
        if in_fence or not line.strip() or _CODE.match(line):
            continue
        line = _LIST_MARK.sub("", line).strip()
        out.extend(s.strip() for s in _SENTENCE_END.split(line) if s.strip())
    return out


def classify_sentence(sentence: str, source: Source = "prompt") -> Kind | None:
    """The kind of statement one sentence makes, or None."""
    s = " ".join(sentence.split())
    bare = s.rstrip(".!")
    if (len(s) > MAX_SENTENCE_CHARS or len(s.split()) < MIN_WORDS or s.endswith("?")
            or _QUESTION_START.search(s) or _HEDGE.search(s)):
        return None
    if _PREF.search(bare):
        if source == "assistant" and not re.match(r"(?i)^(?:noted|understood)\b", s):
            return None
        return "preference"
    if _CONV.search(bare):
        return "convention"
    if source == "assistant":
        if _ASSISTANT_CHOICE.search(s) and _REASON.search(s):
            return "decision"
        if _DECIDED.search(s) and _REASON.search(s) and not s.lower().startswith(("i'll", "let")):
            return "decision"
        return None
    if _DECIDED.search(bare):
        return "decision"
    return None


def extract(text: str, source: Source = "prompt", limit: int = 5) -> list[Statement]:
    """Up to ``limit`` statements found in ``text``, in order, each its own sentence."""
    found: list[Statement] = []
    seen: set[str] = set()
    for s in sentences(text):
        kind = classify_sentence(s, source)
        key = " ".join(s.lower().split())
        if kind is not None and key not in seen:
            seen.add(key)
            found.append(Statement(kind, s))
            if len(found) >= limit:
                break
    return found
