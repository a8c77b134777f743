"""Secret rules: provider tokens, private keys, credentials in URLs, headers and CLI flags, and
`<key> <sep> <value>` assignments, each with the validator that keeps false positives down."""

from __future__ import annotations

import re
from collections.abc import Iterator

from memoray.redaction.heuristics import WHITESPACE, is_benign, looks_random, machine_like
from memoray.redaction.rules import Check, Rule, Span, anchored, positions, scan

SECRET_KINDS: tuple[str, ...] = (
    "gcp_private_key", "private_key", "aws_access_key", "aws_secret_key", "google_api_key",
    "azure_storage_key", "azure_sas_signature", "github_token", "gitlab_token", "slack_token",
    "slack_webhook", "stripe_key", "anthropic_key", "openai_key", "npm_token", "jwt",
    "url_password", "basic_auth", "bearer_token", "secret_assignment", "high_entropy",
)

_IDENT_PATH = re.compile(r"[A-Za-z_$][\w$]*(?:\??\.[A-Za-z_$][\w$]*)*")
_NUMBER = re.compile(r"[+-]?[0-9]+(?:\.[0-9]+)?")


def _not_benign(group: int | str) -> Check:
    return lambda m, _t: not is_benign(m.group(group))


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


def _openai_ok(m: re.Match[str], _text: str) -> bool:
    body = m.group()[3:]
    return any(c.isdigit() for c in body) and any(c.isalpha() for c in body)


def _bearer_ok(m: re.Match[str], _text: str) -> bool:
    v = m.group("v")
    if is_benign(v):
        return False
    return any(c.isdigit() for c in v) or len(v) >= 20 or v != v.lower()


def _url_password_ok(m: re.Match[str], _text: str) -> bool:
    return not is_benign(m.group(2)) and m.group(2).lower() not in ("pass", "pwd", "pw")


def _basic_cli_ok(m: re.Match[str], _text: str) -> bool:
    user, pw = m.group(1), m.group(2)
    if user.isdigit() and pw.isdigit():  # docker run -u 1000:1000
        return False
    return not is_benign(pw)


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
        if WHITESPACE.search(value):  # prose and messages: "Password must be 8 characters"
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
        kind, ok = "high_entropy", looks_random(value)
    elif is_benign(value) or _is_label(value, kw):
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
            ok = machine_like(value) or (env_style and len(value) >= 6)
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
    for p in positions(text, low, tuple(r for r in _ASSIGN_ROOTS if r in present), True):
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
        if is_benign(raw) or raw.lower() == m.group("kw").lower():
            continue
        yield s, e, "secret_assignment"


_XML = re.compile(r"<(?P<tag>[A-Za-z][\w.:\-]{0,40})>(?P<v>[^<>\s]{1,256})</(?P=tag)>")


def _find_xml(text: str, _low: str, _present: frozenset[str]) -> Iterator[Span]:
    """`<password>...</password>`, `<apiKey>...</apiKey>`: Maven settings, app configs."""
    for m in _XML.finditer(text):
        tag = "".join(c for c in m.group("tag").lower() if c.isalnum())
        value = m.group("v")
        if not tag.endswith(_STRONG_ENDINGS) or "public" in tag or is_benign(value):
            continue
        if len(value) >= 4 if tag.endswith(_PASSWORD_ENDINGS) else machine_like(value):
            yield m.start("v"), m.end("v"), "secret_assignment"


_NETRC = re.compile(  # .netrc: machine HOST login USER password SECRET
    r"(?:machine[ \t]+\S+|default)(?:[ \t]+(?:login|account)[ \t]+\S+)+"
    r"[ \t]+password[ \t]+(?P<v>\S+)"
)


# --------------------------------------------------------------------------------------------
# The rules, in order: most specific first.

_B64U = r"[A-Za-z0-9_\-]"

SECRET_RULES: tuple[Rule, ...] = (
    scan("gcp_private_key", r'"private_key"[ \t]*:[ \t]*"(-----BEGIN[^"]*+)"',
         ('"private_key"',), group=1, check=lambda m, _t: bool(_KEY_MATERIAL.search(m[1]))),
    Rule("private_key", _find_pem, ("-----begin",)),
    anchored("aws_access_key", ("AKIA", "ASIA", "ABIA", "ACCA"),
             r"(?<![A-Za-z0-9])A[A-Z]{3}[A-Z0-9]{16}(?![A-Za-z0-9])"),
    anchored("aws_secret_key", ("secret",),
             r"(?P<kw>(?i:secret[_\-]?(?:access[_\-]?)?key))(?:[\"']\]?)?[ \t]*(?:=>|:=|=|:)"
             r"[ \t]*[\"']?(?P<v>[A-Za-z0-9/+]{40})(?![A-Za-z0-9/+=])",
             fold=True, group="v", check=_aws_secret_ok),
    scan("google_api_key", _token("AIza", r"[0-9A-Za-z_\-]{35}(?![0-9A-Za-z_\-])"), ("aiza",)),
    anchored("azure_storage_key", ("AccountKey=", "SharedAccessKey="),
             r"[A-Za-z]+=(?P<v>[A-Za-z0-9+/]{20,}+={0,2})", group="v"),
    anchored("azure_sas_signature", ("sig=",), r"(?<=[?&;])sig=(?P<v>[A-Za-z0-9%+/=]{16,}+)",
             group="v"),
    scan("github_token", _token("gh", r"[pousr]_[A-Za-z0-9]{30,}+(?![A-Za-z0-9_])"), ("gh",)),
    scan("github_token", _token("github_pat_", r"[A-Za-z0-9_]{22,}+"), ("github_pat_",)),
    scan("gitlab_token",
         _token("gl", r"(?:pat|dt|ptt|rt|soat|oas|cbt|imt|ft|agent|ffct)-[A-Za-z0-9_\-]{20,}+"
                      r"(?:\.[A-Za-z0-9_\-]++)*+"), ("gl",)),
    scan("slack_webhook",
         r"hooks\.slack\.com/(?:services|workflows|triggers)/(?P<v>[A-Za-z0-9_/\-]{20,}+)",
         ("hooks.slack.com",), group="v"),
    anchored("slack_token", ("xox", "xapp-"),
             r"(?<![A-Za-z0-9_\-])(?:xox[abposre]|xapp)-[A-Za-z0-9\-]{10,}+",
             check=lambda m, _t: any(c.isdigit() for c in m.group())),
    anchored("stripe_key", ("sk_live_", "rk_live_", "sk_test_", "rk_test_", "whsec_"),
             r"(?<![A-Za-z0-9_])"
             r"(?:[sr]k_(?:live|test)_[A-Za-z0-9]{16,}+|whsec_[A-Za-z0-9]{24,}+)"),
    scan("anthropic_key", _token("sk-ant-", r"[A-Za-z0-9_\-]{20,}+"), ("sk-ant-",)),
    scan("openai_key", _token("sk-", r"[A-Za-z0-9_\-]{20,}+"), ("sk-",), check=_openai_ok),
    scan("npm_token", _token("npm_", r"[A-Za-z0-9]{36}(?![A-Za-z0-9_])"), ("npm_",)),
    scan("jwt", _token("eyJ", rf"{_B64U}{{8,}}+\.{_B64U}{{8,}}+\.{_B64U}*+"), ("eyj",)),
    scan("url_password", r"://([^\s:/?#@\[\]\"'<>]{0,256}):([^\s/@\[\]\"'<>]{1,256})@",
         ("://",), group=2, check=_url_password_ok),
    anchored("basic_auth", ("authorization",),
             r"(?i:authorization)[\"']?[ \t]*[:=][ \t]*[\"']?(?i:basic)[ \t]+"
             r"(?P<v>[A-Za-z0-9+/]{6,}+={0,2})", fold=True, group="v", check=_not_benign("v")),
    scan("basic_auth", r"-(?<![\w\-]-)(?:u|-user)[ \t]+[\"']?([^\s:\"'$]++):([^\s\"']++)",
         ("-u", "--user"), group=2, check=_basic_cli_ok),
    anchored("bearer_token", ("bearer",),
             r"(?<![A-Za-z0-9_])(?i:bearer)[ \t]+(?P<v>[A-Za-z0-9\-._~+/]{8,}+=*)",
             fold=True, group="v", check=_bearer_ok),
    Rule("secret_assignment", _find_flags, ("-",)),
    Rule("secret_assignment", _find_xml, ("</",)),
    anchored("secret_assignment", ("machine", "default"), _NETRC, group="v",
             check=_not_benign("v")),
    Rule("secret_assignment", _find_assignments, _ASSIGN_ROOTS, folds=True),
)
