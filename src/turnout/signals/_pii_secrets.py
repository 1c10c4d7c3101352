"""Secrets: provider API keys with a fixed shape, JWTs, PEM private-key blocks and generic ``key = value`` assignments.

Same contract as ``_pii_patterns``: a regex, a validator that reads nothing right of the candidate, the
candidate's longest reach (``max_width``) and a prefix regex for streaming. Most prefixes start with the
token's literal marker (``sk-``, ``AKIA``, ``ghp_``, ``eyJ``, ``-----BEGIN``), so a streamed answer is held back
only while such a marker is at its tail.

The PEM block is the one pattern without a natural bound: it is held from ``-----BEGIN ... PRIVATE KEY-----``
until its ``-----END ...-----`` line, or until ``PEM_CAP`` characters of body, after which the body read so far is
redacted as it stands (a truncated key is still a leaked key).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence

from turnout.signals._pii_patterns import Found, Recognizer
from turnout.signals._pii_types import PiiType

#: the most body characters a PEM block may have before it is cut (a 4096-bit RSA key is about 3,300)
PEM_CAP = 16_384

_PEM_HEAD = r"-----BEGIN[A-Z0-9 ]{0,30}PRIVATE KEY(?: BLOCK)?-----"
_PEM_BODY = r"(?:(?!-----END)[A-Za-z0-9+/=\s:,.-])"
_PEM = (
    _PEM_HEAD
    + r"(?:"
    + _PEM_BODY
    + r"{0,"
    + str(PEM_CAP)
    + r"}?-----END[A-Z0-9 ]{0,30}PRIVATE KEY(?: BLOCK)?-----"
    + r"|"
    + _PEM_BODY
    + r"{0,"
    + str(PEM_CAP)
    + r"})"
)
# every string an attempt can read: a partial "-----BEGIN", or a block without a completed END line after which
# more text came (once "-----END ...-----" is complete, more text cannot change the match)
_PEM_PREFIX = (
    r"-{1,5}(?:B(?:E(?:G(?:I)?)?)?)?"
    r"|-----BEGIN(?:(?!-----END)[\s\S])*(?:-----END[A-Z0-9 ]{0,48}-{0,5})?"
)

_VALUE_CHARS = r"A-Za-z0-9_\-./+=~!@#$%^&*"
_KEY_WORDS = (
    r"api[_.-]?key|apikey|secret|token|passw(?:or)?d|pwd|access[_.-]?key|auth[_.-]?key|private[_.-]?key"
    r"|client[_.-]?secret|credential"
)
_GENERIC = (
    r"(?<![\w.-])[\w.-]{0,30}?(?:" + _KEY_WORDS + r")s?[\w.-]{0,20}?[\"']?\s{0,3}(?:=>|:=|=|:)\s{0,3}[\"'`]?"
    r"(?P<value>[" + _VALUE_CHARS + r"]{8,200})"
)
_GENERIC_PREFIX = r"[\w.-]{0,70}[\"']?\s{0,3}(?:[=:]>?=?\s{0,3}[\"'`]?[" + _VALUE_CHARS + r"]*)?"

_PLACEHOLDER = re.compile(
    r"^(?:\$\{|\$\(|<|\{\{|%\(|os\.environ|process\.env|env\.|getenv|none$|null$|true$|false$|changeme|"
    r"your[_-]|my[_-]|example|placeholder|redacted|x{6,}|\*{4,}|\.{3,})",
    re.IGNORECASE,
)


def shannon_entropy(value: str) -> float:
    """Bits per character of ``value``'s own character distribution (random base64 is about 4 to 6)."""
    if not value:
        return 0.0
    n = len(value)
    return -sum(c / n * math.log2(c / n) for c in Counter(value).values())


def _token(text: str, m: re.Match[str]) -> Sequence[Found]:
    value = m.group()
    # a real token mixes letters and digits; "sk-learn-is-a-library" or "AKIAEXAMPLEEXAMPLEEX" style words do not
    body = re.split(r"[-_]", value, maxsplit=1)[-1]  # after the marker ("sk-", "ghp_", "xoxb-")
    if not (any(c.isdigit() for c in body) and any(c.isalpha() for c in body)):
        return ()
    return ((m.start(), m.end(), 0.95),)


def _jwt(text: str, m: re.Match[str]) -> Sequence[Found]:
    return ((m.start(), m.end(), 0.95),)


def _pem(text: str, m: re.Match[str]) -> Sequence[Found]:
    return ((m.start(), m.end(), 0.99),)


def _generic(text: str, m: re.Match[str]) -> Sequence[Found]:
    start, end = m.span("value")
    value = text[start:end]
    # sentence punctuation and a closing quote are not part of the value
    stripped = value.rstrip(".,;!\"'`")
    end -= len(value) - len(stripped)
    value = stripped
    if len(value) < 8 or _PLACEHOLDER.search(value):
        return ()
    has_digit = any(c.isdigit() for c in value)
    has_other = any(not c.isalnum() for c in value)
    entropy = shannon_entropy(value)
    if entropy < 3.0 or not (has_digit or has_other or len(value) >= 20):
        return ()
    return ((start, end, 0.8 if entropy >= 3.5 else 0.65),)


def _bearer(text: str, m: re.Match[str]) -> Sequence[Found]:
    start, end = m.span("value")
    value = text[start:end]
    if shannon_entropy(value) < 3.0 or not any(c.isdigit() for c in value):
        return ()
    return ((start, end, 0.9),)


def secret_recognizers() -> list[Recognizer]:
    """The secret recognizers, compiled. All of them report type ``SECRET``; ``recognizer`` tells which kind."""

    def token(name: str, pattern: str, prefix: str, max_width: int, priority: int = 98) -> Recognizer:
        return Recognizer.build(
            name, PiiType.SECRET, pattern, validate=_token, priority=priority, max_width=max_width, prefix=prefix
        )

    return [
        Recognizer.build(
            "private_key",
            PiiType.SECRET,
            _PEM,
            validate=_pem,
            priority=100,
            max_width=len("-----BEGIN") + 30 + len("PRIVATE KEY BLOCK-----") + PEM_CAP + 8 + 30 + 22 + 8,
            prefix=_PEM_PREFIX,
        ),
        Recognizer.build(
            "jwt",
            PiiType.SECRET,
            r"(?<![\w-])eyJ[A-Za-z0-9_-]{8,2048}\.eyJ[A-Za-z0-9_-]{8,8192}\.[A-Za-z0-9_-]{8,2048}(?![\w-])",
            validate=_jwt,
            priority=97,
            max_width=3 + 2048 + 4 + 8192 + 1 + 2048 + 1,
            prefix=r"e(?:y(?:J[A-Za-z0-9_.-]*)?)?",
        ),
        token(
            "openai_key",
            r"(?<![\w-])sk-(?:proj-|svcacct-|admin-|ant-(?:api|admin)\d{2}-)?[A-Za-z0-9_-]{20,250}(?![\w-])",
            r"s(?:k(?:-[A-Za-z0-9_-]*)?)?",
            3 + 12 + 250 + 1,
        ),
        token(
            "aws_access_key",
            r"(?<![A-Za-z0-9])(?:AKIA|ASIA|ABIA|ACCA)[A-Z0-9]{16}(?![A-Za-z0-9])",
            r"A[A-Z0-9]*",
            20 + 1,
        ),
        token(
            "github_token",
            r"(?<![\w-])(?:gh[pousr]_[A-Za-z0-9]{36,251}|github_pat_[A-Za-z0-9_]{22,255})(?![\w-])",
            r"g[A-Za-z0-9_]*",
            11 + 255 + 1,
        ),
        token("slack_token", r"(?<![\w-])xox[abposre]-[A-Za-z0-9-]{10,250}(?![\w-])", r"x[A-Za-z0-9-]*", 5 + 250 + 1),
        token(
            "slack_webhook",
            r"hooks\.slack\.com/services/T[A-Z0-9]{6,12}/B[A-Z0-9]{6,12}/[A-Za-z0-9]{20,32}(?![\w])",
            r"h[A-Za-z0-9./]*",
            26 + 13 + 14 + 32 + 1,
        ),
        token("google_api_key", r"(?<![\w-])AIza[0-9A-Za-z_-]{35}(?![\w-])", r"A[\w-]*", 39 + 1),
        token(
            "stripe_key",
            r"(?<![\w-])(?:sk|rk)_(?:live|test)_[A-Za-z0-9]{16,247}(?![\w-])",
            r"[sr][\w]*",
            8 + 247 + 1,
        ),
        token("huggingface_token", r"(?<![\w-])hf_[A-Za-z0-9]{30,40}(?![\w-])", r"h[\w]*", 3 + 40 + 1),
        token("gitlab_token", r"(?<![\w-])glpat-[A-Za-z0-9_-]{20,50}(?![\w-])", r"g[\w-]*", 6 + 50 + 1),
        token("npm_token", r"(?<![\w-])npm_[A-Za-z0-9]{36}(?![\w-])", r"n[\w]*", 4 + 36 + 1),
        Recognizer.build(
            "bearer_token",
            PiiType.SECRET,
            r"(?<![\w-])bearer\s{1,3}(?P<value>[A-Za-z0-9_\-.~+/]{20,500}={0,3})",
            validate=_bearer,
            priority=96,
            flags=re.IGNORECASE,
            max_width=6 + 3 + 500 + 3 + 1,
            prefix=r"b(?:e(?:a(?:r(?:e(?:r\s{0,3}[A-Za-z0-9_\-.~+/=]*)?)?)?)?)?",
        ),
        Recognizer.build(
            "generic_secret",
            PiiType.SECRET,
            _GENERIC,
            validate=_generic,
            priority=95,
            flags=re.IGNORECASE,
            max_width=30 + 16 + 1 + 20 + 1 + 3 + 2 + 3 + 1 + 200,
            prefix=_GENERIC_PREFIX,
        ),
    ]


__all__ = ["PEM_CAP", "secret_recognizers", "shannon_entropy"]
