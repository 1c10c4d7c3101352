"""Compiled patterns with validation for the structured PII types: email, phone, credit card, IBAN, SSN, IP.

Each :class:`Recognizer` is one regex (candidates) plus one validator (checksums and shape rules that turn a
candidate into zero or more spans). Two numbers make streaming exact (see ``redact.StreamRedactor``):

* ``max_width``: the most characters any attempt of the regex reads from its start, consumed characters plus
  the one character a trailing ``(?!...)`` peeks at. A test checks it against the regex's own width.
* ``prefix``: a regex that accepts every string such an attempt can read before it stops; a start position
  whose tail the prefix does not accept cannot change when more text arrives. Every regex here peeks at most
  one character past what it consumes, so the prefix is simply "a run of consumable characters".

Validators only look *left* of a candidate (at most ``LEFT_CONTEXT`` characters), never right of it, so what
they decide never depends on text that has not arrived yet.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from turnout.signals._pii_types import PiiType

#: characters before a candidate that a validator may read (context words such as "Phone:")
LEFT_CONTEXT = 48

#: (start, end, score) spans a validator accepts inside one regex candidate
Found = tuple[int, int, float]
Validator = Callable[[str, "re.Match[str]"], Sequence[Found]]


@dataclass(frozen=True, slots=True)
class Recognizer:
    """One regex with its validator, its priority among overlapping finds, and its streaming bounds."""

    name: str
    type: PiiType
    regex: re.Pattern[str]
    validate: Validator
    priority: int
    max_width: int
    prefix: re.Pattern[str]

    @classmethod
    def build(
        cls,
        name: str,
        type: PiiType,
        pattern: str,
        *,
        validate: Validator,
        priority: int,
        max_width: int,
        prefix: str,
        flags: int = 0,
    ) -> Recognizer:
        """Compile ``pattern`` and ``prefix`` (the latter anchored at the end of the text) with ``flags``."""
        return cls(
            name=name,
            type=type,
            regex=re.compile(pattern, flags),
            validate=validate,
            priority=priority,
            max_width=max_width,
            prefix=re.compile(f"(?:{prefix})\\Z", flags),
        )


# ---------------------------------------------------------------------------------------------- checks


def luhn_ok(digits: str) -> bool:
    """Luhn checksum of a digit string (every card number passes it; 1 random number in 10 does too)."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


# (prefix low, prefix high, allowed lengths): issuer ranges of the card networks; a number outside every range
# is not a card even when its Luhn digit happens to fit
_CARD_RANGES: tuple[tuple[int, int, frozenset[int]], ...] = (
    (4, 4, frozenset({13, 16, 19})),  # Visa
    (1800, 1800, frozenset({15})),
    (2131, 2131, frozenset({15})),  # JCB's older 15-digit ranges
    (51, 55, frozenset({16})),  # Mastercard
    (2221, 2720, frozenset({16})),  # Mastercard 2-series
    (34, 34, frozenset({15})),
    (37, 37, frozenset({15})),  # American Express
    (300, 305, frozenset(range(14, 20))),
    (3095, 3095, frozenset(range(14, 20))),  # Diners Club
    (36, 36, frozenset(range(14, 20))),
    (38, 39, frozenset(range(14, 20))),
    (35, 35, frozenset(range(16, 20))),  # JCB
    (6011, 6011, frozenset(range(16, 20))),
    (644, 649, frozenset(range(16, 20))),  # Discover
    (65, 65, frozenset(range(16, 20))),
    (62, 62, frozenset(range(16, 20))),  # UnionPay
    (2200, 2204, frozenset(range(16, 20))),  # Mir
    (50, 50, frozenset(range(12, 20))),
    (56, 69, frozenset(range(12, 20))),  # Maestro
)


def card_ok(digits: str) -> bool:
    """An issuer range that allows this length, and the Luhn checksum."""
    n = len(digits)
    for lo, hi, lengths in _CARD_RANGES:
        width = len(str(lo))
        if n in lengths and lo <= int(digits[:width]) <= hi:
            return luhn_ok(digits)
    return False


#: IBAN length per country (ISO 13616 registry)
IBAN_LENGTHS: dict[str, int] = {
    "AD": 24,
    "AE": 23,
    "AL": 28,
    "AT": 20,
    "AZ": 28,
    "BA": 20,
    "BE": 16,
    "BG": 22,
    "BH": 22,
    "BI": 27,
    "BR": 29,
    "BY": 28,
    "CH": 21,
    "CR": 22,
    "CY": 28,
    "CZ": 24,
    "DE": 22,
    "DJ": 27,
    "DK": 18,
    "DO": 28,
    "EE": 20,
    "EG": 29,
    "ES": 24,
    "FI": 18,
    "FK": 18,
    "FO": 18,
    "FR": 27,
    "GB": 22,
    "GE": 22,
    "GI": 23,
    "GL": 18,
    "GR": 27,
    "GT": 28,
    "HN": 28,
    "HR": 21,
    "HU": 28,
    "IE": 22,
    "IL": 23,
    "IQ": 23,
    "IS": 26,
    "IT": 27,
    "JO": 30,
    "KW": 30,
    "KZ": 20,
    "LB": 28,
    "LC": 32,
    "LI": 21,
    "LT": 20,
    "LU": 20,
    "LV": 21,
    "LY": 25,
    "MC": 27,
    "MD": 24,
    "ME": 22,
    "MK": 19,
    "MN": 20,
    "MR": 27,
    "MT": 31,
    "MU": 30,
    "NI": 28,
    "NL": 18,
    "NO": 15,
    "OM": 23,
    "PK": 24,
    "PL": 28,
    "PS": 29,
    "PT": 25,
    "QA": 29,
    "RO": 24,
    "RS": 22,
    "RU": 33,
    "SA": 24,
    "SC": 31,
    "SD": 18,
    "SE": 24,
    "SI": 19,
    "SK": 24,
    "SM": 27,
    "SO": 23,
    "ST": 25,
    "SV": 28,
    "TL": 23,
    "TN": 24,
    "TR": 26,
    "UA": 29,
    "VA": 22,
    "VG": 24,
    "XK": 20,
    "YE": 30,
}


def iban_ok(compact: str) -> bool:
    """Country length and the ISO 7064 mod-97 check of an IBAN without spaces (either case)."""
    iban = compact.upper()
    if IBAN_LENGTHS.get(iban[:2]) != len(iban) or not iban[2:4].isdigit():
        return False
    rearranged = iban[4:] + iban[:4]
    return int("".join(str(int(ch, 36)) for ch in rearranged)) % 97 == 1


def ssn_ok(area: str, group: str, serial: str) -> bool:
    """SSA rules: area not 000, 666 or 900-999; group not 00; serial not 0000."""
    return area not in ("000", "666") and area[0] != "9" and group != "00" and serial != "0000"


def _left(text: str, start: int) -> str:
    return text[max(0, start - LEFT_CONTEXT) : start].lower()


# ---------------------------------------------------------------------------------------------- validators


def _email(text: str, m: re.Match[str]) -> Sequence[Found]:
    local, _, domain = m.group().rpartition("@")
    if ".." in local or local.endswith(".") or ".." in domain:
        return ()
    return ((m.start(), m.end(), 0.95),)


def _card(text: str, m: re.Match[str]) -> Sequence[Found]:
    digits = re.sub(r"\D", "", m.group())
    return ((m.start(), m.end(), 0.95),) if card_ok(digits) else ()


def _iban(text: str, m: re.Match[str]) -> Sequence[Found]:
    raw = m.group()
    expected = IBAN_LENGTHS.get(raw[:2].upper())
    if expected is None:
        return ()
    # the regex may have run on into a following word ("GB29 NWBK ... 26 is"): keep the first `expected`
    # alphanumerics, then check
    count = 0
    for i, ch in enumerate(raw):
        if ch.isalnum():
            count += 1
            if count == expected:
                end = m.start() + i + 1
                # (never read past the candidate: the text after it may not have arrived yet)
                if end < m.end() and text[end].isalnum():
                    return ()  # it stops inside a word: not an IBAN boundary
                return ((m.start(), end, 0.95),) if iban_ok(re.sub(r"\s", "", raw[: i + 1])) else ()
    return ()


_SSN_CONTEXT = re.compile(r"ssn|social security|soc\.? ?sec|taxpayer|tin\b")


def _ssn(text: str, m: re.Match[str]) -> Sequence[Found]:
    area, group, serial = m.group("area"), m.group("group"), m.group("serial")
    if not ssn_ok(area, group, serial):
        return ()
    if m.group("sep") != "-":
        # nine bare or spaced digits are as often an account, licence or house number: only after a context word
        return ((m.start(), m.end(), 0.85),) if _SSN_CONTEXT.search(_left(text, m.start())) else ()
    return ((m.start(), m.end(), 0.9),)


def _ipv4(text: str, m: re.Match[str]) -> Sequence[Found]:
    try:
        ipaddress.IPv4Address(m.group())
    except ValueError:
        return ()
    return ((m.start(), m.end(), 0.9),)


def _ipv6(text: str, m: re.Match[str]) -> Sequence[Found]:
    value = m.group()
    try:
        ipaddress.IPv6Address(value)
    except ValueError:
        return ()
    # "a::b" or "de:ad::" in prose or code is no address: ask for three groups with digits in them
    groups = [g for g in value.split(":") if g]
    if len(groups) < 3 and not (len(groups) >= 2 and any(ch.isdigit() for ch in value)):
        return ()
    return ((m.start(), m.end(), 0.85),)


_PHONE_CONTEXT = re.compile(
    r"phone|tel\b|tel\.|telephone|call|mobile|cell|fax|reach|number|contact|whatsapp|sms|text me|dial|desk|office"
    r"|answering|ring|hotline|\bat\s*$|\bon\s*$"
)
_DATE_LIKE = re.compile(r"\d{4}[-./]\d{1,2}[-./]\d{1,2}|\d{1,2}[-./]\d{1,2}[-./]\d{4}")
_PHONE_TRAILER = re.compile(r"[ -]?(?:office|fax|mobile|cell|home|work|desk)\b", re.IGNORECASE)


def _phone(text: str, m: re.Match[str]) -> Sequence[Found]:
    number = m.group("number")
    start, end = m.start("number"), m.end("number")
    ext = m.group("ext")
    if ext:
        end = m.end("ext")
    digits = re.sub(r"\D", "", number)
    if not 6 <= len(digits) <= 15 or _DATE_LIKE.fullmatch(number):
        return ()
    if len(set(digits)) == 1:
        return ()  # "000000000" is a filler, not a number
    strong = (
        number.startswith("+")
        or "(" in number
        or bool(ext)
        or re.fullmatch(r"(?:1[ .-])?\d{3}[ .-]\d{3}[ .-]\d{4}", number) is not None
        or re.fullmatch(r"0\d{1,4}(?:[ .-]\d{2,4}){2,4}", number) is not None  # national trunk prefix, grouped
    )
    context = bool(_PHONE_CONTEXT.search(_left(text, start))) or bool(m.group("trailer"))
    if len(digits) < 7 and not context:
        return ()
    if strong:
        return ((start, end, 0.85 if context else 0.7),)
    after = m.group("after")
    if after and after.strip().lower() not in _PHONE_FOLLOWERS:
        return ()
    if " " not in number and "-" not in number and "." not in number:
        # a bare run of digits is an order, account or licence number more often than a phone
        return ((start, end, 0.6),) if context and len(digits) >= 8 else ()
    return ((start, end, 0.75 if context else 0.45),)


# ---------------------------------------------------------------------------------------------- recognizers

_EMAIL = (
    r"(?<![\w.%+-])[A-Za-z0-9](?:[A-Za-z0-9._%+-]{0,63})@"
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.){1,4}[A-Za-z]{2,24}(?![\w-])"
)
_CARD = (
    r"(?<![\w-])(?:\d{4}(?P<sep>[ -])\d{4}(?P=sep)\d{4}(?P=sep)\d{1,7}|\d{4}[ -]\d{6}[ -]\d{4,5}|\d{12,19})"
    r"(?![\w-])"
)
_IBAN = r"(?<![A-Za-z0-9])[A-Za-z]{2}\d{2}(?: ?[A-Za-z0-9]){11,30}"
_SSN = r"(?<![\w-])(?P<area>\d{3})(?P<sep>[- ]?)(?P<group>\d{2})(?P=sep)(?P<serial>\d{4})(?![\w-])"
_IPV4 = r"(?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?![\w]|\.\d)"
_IPV6 = r"(?<![\w:.])(?:[0-9A-Fa-f]{0,4}:){2,7}(?:[0-9A-Fa-f]{1,4}|(?:\d{1,3}\.){3}\d{1,3})?(?![\w:])"
_GROUP_SEP = r"(?:[ .-]|\s?/\s?)"
_PHONE = (
    r"(?<![\w+(.-])(?P<number>"
    r"\+\d{1,3}[ .-]?(?:\(0\)[ .-]?)?(?:\(\d{1,4}\)[ .-]?)?\d{1,5}(?:[ .-]?\d{1,5}){1,5}"  # +CC ...
    r"|\(\d{2,5}\)[ .-]?\d{2,5}(?:[ .-]?\d{2,5}){1,3}"  # (area) local
    r"|\d{2,5}(?:" + _GROUP_SEP + r"\d{2,8}){1,5}"  # grouped digits
    r"|\d{7,15}"  # a bare run
    r")(?P<ext>\s?(?:x|ext\.?|extension)\s?\d{1,6})?"
    r"(?:(?P<trailer>[ -]?(?:office|fax|mobile|cell|home|work|desk)\b)|(?P<after> [^\W\d_]{1,20}))?"
    r"(?![\w-]|\.\d)"
)
# what a phone attempt can read: number characters, then part of an extension, then part of one word
_PHONE_PREFIX = (
    r"[+(\d][\d\s()+./-]*(?:(?:x|e(?:x(?:t(?:\.|e(?:n(?:s(?:i(?:o(?:n)?)?)?)?)?)?)?)?)\s?\d*)?(?:[ -]?[^\W\d_]{0,20})?"
)
#: words that may follow a phone number in a sentence ("call me at 555 0199 or ..."); any other word right after
#: a weakly shaped number reads as a street ("lives at 21 3314 Harley Brook Lane")
_PHONE_FOLLOWER_WORDS = (
    "i or and to if at on for please thanks thank you anytime between after before until from is was the we they he she it when"
)
_PHONE_FOLLOWERS = frozenset(_PHONE_FOLLOWER_WORDS.split())


def structured_recognizers() -> list[Recognizer]:
    """The recognizers of the six structured types, compiled."""
    return [
        Recognizer.build(
            "email",
            PiiType.EMAIL,
            _EMAIL,
            validate=_email,
            priority=75,
            # 1 + 63 + '@' + 4 labels of 63 + dots + 24 + peek
            max_width=1 + 63 + 1 + 4 * 64 + 24 + 1,
            prefix=r"[A-Za-z0-9._%+@-]*",
        ),
        Recognizer.build(
            "credit_card",
            PiiType.CREDIT_CARD,
            _CARD,
            validate=_card,
            priority=90,
            max_width=4 + 1 + 4 + 1 + 4 + 1 + 7 + 1,
            prefix=r"\d[\d -]*",
        ),
        Recognizer.build(
            "iban",
            PiiType.IBAN,
            _IBAN,
            validate=_iban,
            priority=85,
            flags=re.IGNORECASE,
            # two letters, two digits, then alphanumerics each after an optional space (a trailing space too:
            # the regex reads on past it)
            max_width=4 + 2 * 30,
            prefix=r"[A-Za-z](?:[A-Za-z](?:\d(?:\d(?: ?[A-Za-z0-9])* ?)?)?)?",
        ),
        Recognizer.build(
            "ssn",
            PiiType.SSN,
            _SSN,
            validate=_ssn,
            priority=80,
            max_width=11 + 1,
            prefix=r"\d[\d -]*",
        ),
        Recognizer.build(
            "ipv4",
            PiiType.IP_ADDRESS,
            _IPV4,
            validate=_ipv4,
            priority=70,
            max_width=15 + 2,
            prefix=r"\d[\d.]*",
        ),
        Recognizer.build(
            "ipv6",
            PiiType.IP_ADDRESS,
            _IPV6,
            validate=_ipv6,
            priority=70,
            max_width=7 * 5 + 15 + 1,
            prefix=r"[0-9A-Fa-f:.]*",
        ),
        Recognizer.build(
            "phone",
            PiiType.PHONE,
            _PHONE,
            validate=_phone,
            priority=60,
            flags=re.IGNORECASE,
            # the longest number (5 digits then 5 groups of 8 with 3-character separators), ' extension 999999'
            # 17, a following word of 21, and two peeks
            max_width=5 + 5 * 11 + 17 + 21 + 2,
            prefix=_PHONE_PREFIX,
        ),
    ]


__all__ = [
    "IBAN_LENGTHS",
    "LEFT_CONTEXT",
    "Found",
    "Recognizer",
    "Validator",
    "card_ok",
    "iban_ok",
    "luhn_ok",
    "ssn_ok",
    "structured_recognizers",
]
