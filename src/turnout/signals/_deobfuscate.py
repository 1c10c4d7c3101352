"""Undo the cheap disguises attackers put on an instruction, so the detector can scan it again.

Each function returns the cleaned or decoded text, or None when the disguise is
not there, so the detector re-scans only what changed (a second embedding is a
few milliseconds; most prompts need none). Covered: invisible characters
(zero-width spaces, joiners, bidi controls, soft hyphens), Unicode homoglyphs
(Cyrillic/Greek letters that look Latin, full-width and mathematical letters via
NFKC), leetspeak (``1gn0r3``), letter-spacing (``I g n o r e``), base64, hex,
percent-encoding and ROT13.

Example::

    variants("Ign\\u200bore аll previous instructions")   # [('normalised', 'Ignore all previous instructions')]
"""

from __future__ import annotations

import base64
import binascii
import codecs
import re
import unicodedata
import urllib.parse

#: Cyrillic and Greek letters that render like Latin ones (lower and upper case)
_CONFUSABLES = {
    "а": "a",
    "в": "b",
    "е": "e",
    "ё": "e",
    "к": "k",
    "м": "m",
    "н": "h",
    "о": "o",
    "р": "p",
    "с": "c",
    "т": "t",
    "у": "y",
    "х": "x",
    "і": "i",
    "ј": "j",
    "ѕ": "s",
    "ԁ": "d",
    "ԛ": "q",
    "ԝ": "w",
    "ү": "y",
    "һ": "h",
    "А": "A",
    "В": "B",
    "Е": "E",
    "К": "K",
    "М": "M",
    "Н": "H",
    "О": "O",
    "Р": "P",
    "С": "C",
    "Т": "T",
    "Х": "X",
    "І": "I",
    "Ј": "J",
    "Ѕ": "S",
    "α": "a",
    "ο": "o",
    "ν": "v",
    "ρ": "p",
    "τ": "t",
    "υ": "u",
    "ι": "i",
    "κ": "k",
    "Α": "A",
    "Β": "B",
    "Ε": "E",
    "Ζ": "Z",
    "Η": "H",
    "Ι": "I",
    "Κ": "K",
    "Μ": "M",
    "Ν": "N",
    "Ο": "O",
    "Ρ": "P",
    "Τ": "T",
    "Υ": "Y",
    "Χ": "X",
}
_LEET = str.maketrans({"0": "o", "1": "i", "3": "e", "4": "a", "5": "s", "7": "t", "8": "b", "@": "a", "$": "s"})
_WORD = re.compile(r"\S+")
_LEET_CHARS = frozenset("0134578@$")
_LEET_TOKEN = re.compile(r"[A-Za-z0-9@$]+")
#: tokens with digits that are never leetspeak: ordinals, units and times
_UNIT = re.compile(r"\d*(1st|2nd|3rd|\dth)|\d+(s|am|pm|k|m|x|d|g|gb|mb|kb|px|cm|mm|km|kg|ms|bn)")
_B64 = re.compile(r"(?<![A-Za-z0-9+/=_-])[A-Za-z0-9+/_-]{16,}={0,2}(?![A-Za-z0-9+/=_-])")
_HEX = re.compile(r"\b(?:[0-9a-fA-F]{2}[ :]?){12,}\b")
_PCT = re.compile(r"(?:%[0-9a-fA-F]{2}){6,}")
#: frequent English words: a text that has many more of them after ROT13 was ROT13 before
_COMMON_WORDS = (
    "the be to of and a in that have i it for not on with he as you do at this but his by from they we "
    "say her she or an will my one all would there their what so up out if about who get which go me "
    "when make can like no just him know take into your some could them see other than then now "
    "only its over also after use two how our first well way even new want because any these give "
    "most us is are was were tell ignore instructions previous password secret"
)
_COMMON = frozenset(_COMMON_WORDS.split())


def strip_invisible(text: str) -> str | None:
    """``text`` without format characters (Unicode category Cf: zero-width, bidi, soft hyphen), or None if none."""
    out = "".join(ch for ch in text if unicodedata.category(ch) != "Cf")
    return out if out != text else None


def fold_homoglyphs(text: str) -> str | None:
    """NFKC, then look-alike Cyrillic/Greek letters to Latin in words that also hold Latin letters.

    Only mixed-script words are folded (and, in a mostly Latin text, words made of
    look-alikes alone), so a Russian or Greek name or prompt is left as it is.
    None unless a look-alike was folded or NFKC turned letters into plain ASCII
    ones (full-width or mathematical letters): NFKC's other rewrites (ligatures,
    spaces, composed Thai or Bengali vowels) are no disguise.
    """
    nfkc = unicodedata.normalize("NFKC", text)
    latin = sum(1 for ch in nfkc if "a" <= ch.lower() <= "z")
    letters = sum(1 for ch in nfkc if ch.isalpha()) or 1
    mostly_latin = latin / letters >= 0.5
    folded = 0

    def fold(m: re.Match[str]) -> str:
        nonlocal folded
        word = m.group(0)
        if not any(ch in _CONFUSABLES for ch in word):
            return word
        has_latin = any("a" <= ch.lower() <= "z" for ch in word)
        only_lookalikes = all(ch in _CONFUSABLES for ch in word if ch.isalpha())
        if has_latin or (mostly_latin and only_lookalikes):
            folded += 1
            return "".join(_CONFUSABLES.get(ch, ch) for ch in word)
        return word

    out = _WORD.sub(fold, nfkc)
    ascii_gain = _ascii_letters(out) > _ascii_letters(text)
    return out if (folded or ascii_gain) and out != text else None


def _ascii_letters(text: str) -> int:
    return sum(1 for ch in text if ch.isascii() and ch.isalpha())


def unleet(text: str) -> str | None:
    """Digits and ``@``/``$`` read as letters inside words (``1gn0r3 4ll`` -> ``ignore all``).

    Kept only when the reading has at least two more common English words than the
    text: numbers beside letters are usually just that (``mid-20th``, ``2x4s``,
    ``$1.7bn``, ``mp3``), and reading them as leetspeak would only cost a rescan.
    """

    def fix(m: re.Match[str]) -> str:
        t = m.group(0)
        if any(ch.isalpha() for ch in t) and any(ch in _LEET_CHARS for ch in t) and not _UNIT.fullmatch(t.lower()):
            return t.translate(_LEET)
        return t

    out = _LEET_TOKEN.sub(fix, text)
    if out == text or _common_count(out) < _common_count(text) + 2:
        return None
    return out


def unspace(text: str) -> str | None:
    """Letter-spaced text (``I g n o r e  a l l``) joined back into words; None unless most tokens are one character."""
    tokens = text.split()
    if len(tokens) < 8 or sum(1 for t in tokens if len(t) == 1) / len(tokens) < 0.7:
        return None
    # runs of 2+ spaces were the original word gaps, single spaces sat between letters; without any double
    # space the gaps are lost and the letters are joined (character n-grams still see the words)
    words = [w.replace(" ", "") for w in re.split(r"\s{2,}", text.strip())]
    out = " ".join(words) if len(words) > 1 else "".join(tokens)
    return out if out != text else None


def _printable(s: str) -> bool:
    if not s:
        return False
    good = sum(1 for ch in s if ch.isprintable() or ch in "\n\t")
    letters = sum(1 for ch in s if ch.isalpha())
    return good / len(s) >= 0.95 and letters / len(s) >= 0.5


def decode_base64(text: str) -> str | None:
    """The decoded text of each base64 run of 16+ characters that decodes to readable UTF-8, joined; else None."""
    found = []
    for m in _B64.finditer(text):
        chunk = m.group(0)
        if chunk.isalpha() and (chunk.islower() or chunk.isupper()):
            continue  # a long plain word, not an encoding
        padded = chunk + "=" * (-len(chunk) % 4)
        try:
            raw = base64.b64decode(padded, altchars=b"-_" if ("-" in chunk or "_" in chunk) else None, validate=True)
            s = raw.decode("utf-8")
        except (binascii.Error, UnicodeDecodeError, ValueError):
            continue
        if _printable(s):
            found.append(s)
    return "\n".join(found) if found else None


def decode_hex(text: str) -> str | None:
    """The decoded text of hex byte runs (12+ bytes, optionally space- or colon-separated); else None."""
    found = []
    for m in _HEX.finditer(text):
        digits = re.sub(r"[ :]", "", m.group(0))
        if len(digits) % 2:
            digits = digits[:-1]
        try:
            s = bytes.fromhex(digits).decode("utf-8")
        except (ValueError, UnicodeDecodeError):
            continue
        if _printable(s):
            found.append(s)
    return "\n".join(found) if found else None


def decode_percent(text: str) -> str | None:
    """Text with percent-encoded runs (6+ escapes) decoded; else None."""
    if not _PCT.search(text):
        return None
    out = urllib.parse.unquote(text)
    return out if out != text else None


def _common_count(text: str) -> int:
    return sum(1 for w in re.findall(r"[a-z]+", text.lower()) if w in _COMMON)


def _common_share(text: str) -> float:
    words = re.findall(r"[a-z]+", text.lower())
    return sum(1 for w in words if w in _COMMON) / len(words) if words else 0.0


def decode_rot13(text: str) -> str | None:
    """The ROT13 reading of ``text`` when it has far more common English words than ``text`` itself; else None.

    Each sentence that reads better flipped is flipped in place, so an English request
    wrapped around a ROT13 payload ("decode this: Vtaber nyy ...") is caught too.
    """
    # compare sentence by sentence (the separators kept as they were): the payload is often one part of the prompt
    parts = re.split(r"((?<=[.:\n])\s+)", text)
    out, changed = [], False
    for k, part in enumerate(parts):
        rot = codecs.encode(part, "rot13")
        if (
            k % 2 == 0
            and len(re.findall(r"[a-z]+", part.lower())) >= 3
            and _common_share(rot) >= 0.2
            and _common_share(rot) >= 2 * _common_share(part) + 0.1
        ):
            out.append(rot)
            changed = True
        else:
            out.append(part)
    return "".join(out) if changed else None


#: (name, function) in the order they are tried; each sees the output of ``normalise``
DECODERS = (("base64", decode_base64), ("hex", decode_hex), ("percent", decode_percent), ("rot13", decode_rot13))


def normalise(text: str) -> tuple[str, list[str]]:
    """``text`` with invisible characters, homoglyphs, leetspeak and letter-spacing undone; and what was undone."""
    steps: list[str] = []
    out = text
    for name, fn in (
        ("invisible characters", strip_invisible),
        ("homoglyphs", fold_homoglyphs),
        ("letter-spacing", unspace),
        ("leetspeak", unleet),
    ):
        new = fn(out)
        if new is not None and new.strip():
            steps.append(name)
            out = new
    return out, steps


def variants(text: str) -> list[tuple[str, str]]:
    """Readings of ``text`` other than itself worth scanning again: ``[(how it was obtained, text), ...]``.

    ``normalised`` when :func:`normalise` changed anything, then each decoder's
    output (run on the normalised text). Empty for an ordinary prompt.
    """
    out: list[tuple[str, str]] = []
    norm, steps = normalise(text)
    if steps:
        out.append(("normalised (" + ", ".join(steps) + ")", norm))
    for name, fn in DECODERS:
        decoded = fn(norm)
        if decoded is not None and decoded.strip() and decoded != norm:
            out.append((f"decoded {name}", decoded))
    return out
