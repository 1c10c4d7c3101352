"""The jailbreak detector's explainable parts: instruction-override patterns and a gibberish score.

*Patterns* are hand-written regular expressions for the moves attacks share
whatever their wording: telling the model to drop its instructions, asking for
its hidden prompt or secret, declaring it unrestricted, switching on a named
jailbreak persona or mode, forcing compliance ("begin your reply with 'Sure'"),
in English and a few other languages. Each is narrow on purpose ("ignore the
noise in this audio" and "forget what I said about Tuesday" must not match);
their hit rates on benign training prompts are measured at fit time and stored.

The *gibberish score* catches optimised adversarial suffixes (GCG-style token
salad such as ``describing.\\ + similarlyNow ...``), which read as nonsense to a
character model of ordinary prompts: a character-trigram model (hashed counts,
add-α smoothing) gives each character its surprisal in bits, and the score is
the highest mean surprisal over any 40-character ASCII window of at least
five tokens. Non-ASCII windows are skipped (a prompt in another script is not
gibberish), so are windows of one or two long tokens (base64, hashes, UUIDs
are opaque, not adversarial), and digits are folded together.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

#: (name, pattern); matched case-insensitively on the normalised text
PATTERNS: tuple[tuple[str, str], ...] = (
    (
        "ignore-instructions",
        (
            r"\b(ignore|disregard|forget|override|bypass|discard|abandon|drop)\b[^.\n]{0,40}?\b(previous|prior|above|earlier|"
            r"preceding|original|initial|system|all|any|every|your|these|those)\b[^.\n]{0,30}?\b(instructions?|rules|"
            r"guidelines|directives?|programming|restrictions|constraints|guardrails|safeguards|system prompt)\b"
        ),
    ),
    (
        "reveal-hidden",
        (
            r"\b(reveal|print|show|tell|repeat|output|display|leak|give|spell|write out)\b[^.\n]{0,30}?\b(your|the)\s+"
            r"(system prompt|hidden prompt|initial prompt|original prompt|secret (password|key|word)|password|"
            r"(hidden |initial |original )?instructions you were given)"
        ),
    ),
    (
        "unrestricted-persona",
        (
            r"\byou\b[^.\n]{0,40}?\b(have no|without( any)?|free (of|from)|freed from|unbound by|no longer (bound|restricted) "
            r"by|not bound by)\b[^.\n]{0,25}?\b(restrictions|filters|limits|limitations|rules|content polic(y|ies)|"
            r"guidelines|censorship|ethics|morals|morality|safety)\b"
        ),
    ),
    (
        "jailbreak-mode",
        (
            r"((?-i:\bDAN\b)|\b(do anything now|developer mode|dev mode|god mode|jailbr(eak|oken) mode|unfiltered mode|"
            r"evil (mode|confidant)|(never|don'?t|do not) break character|stay in character|"
            r"jailbroken)\b)"
        ),
    ),
    (
        "forced-compliance",
        (
            r"\b(begin|start) (your|the) (reply|response|answer) with\s+['\"]?(sure|certainly|absolutely|of course)|"
            r"\b(never|must not|do not|don'?t|cannot|can'?t) (refuse|decline|say no)\b|"
            r"\bwithout (any )?(moral|ethical) (judg(e)?ment|considerations?|restrictions)"
        ),
    ),
    (
        "override-other-language",
        (
            r"\bignor(ez|a|iere|ieren|are)\b[^.\n]{0,25}?\b(instructions?|anweisungen|instrucciones|istruzioni|"
            r"regeln|reglas|r[eè]gles)\b|\b(olvida|oublie[zr]?|vergiss|dimentica)\b[^.\n]{0,25}?\b(tus|tes|vos|deine|le tue|"
            r"las|les|die)\b[^.\n]{0,15}?\b(instrucciones|reglas|instructions|r[eè]gles|anweisungen|regeln|istruzioni)\b"
        ),
    ),
)
# the DAN persona is matched case-sensitively (inline flag): case-insensitive it would be the name Dan
_COMPILED = tuple((name, re.compile(p, re.IGNORECASE)) for name, p in PATTERNS)


def pattern_hits(text: str) -> list[str]:
    """Names of the override patterns ``text`` matches (empty for most prompts)."""
    return [name for name, rx in _COMPILED if rx.search(text)]


# ------------------------------------------------------------------ gibberish
BUCKETS = 1 << 18
WINDOW = 40
#: spaces a window must hold (about five tokens) to be scored
MIN_GAPS = 4
_ALPHA = 0.5
_VOCAB = 96.0


def _codes(text: str) -> np.ndarray:
    """Character codes, lower-cased, with digits folded to '0' and whitespace runs to one space."""
    t = re.sub(r"\s+", " ", text.lower())
    t = re.sub(r"\d", "0", t)
    return np.frombuffer(t.encode("utf-32-le"), dtype=np.uint32).astype(np.int64)


def _ids(c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Hashed (bigram context, trigram) bucket ids of each position from the third character on."""
    a, b, x = c[:-2], c[1:-1], c[2:]
    bi = (a * 1_000_003 + b * 7919) % BUCKETS
    tri = (a * 1_000_003 + b * 7919 + x * 104_729 + 12_345) % BUCKETS
    return bi, tri


@dataclass(frozen=True)
class CharTrigrams:
    """Hashed character-trigram and bigram counts; :meth:`score` is the gibberish score (bits per character)."""

    tri: np.ndarray
    bi: np.ndarray

    @classmethod
    def fit(cls, texts: Sequence[str]) -> CharTrigrams:
        """Count the trigrams of ``texts`` (any prompts in the language the gateway serves)."""
        tri = np.zeros(BUCKETS, dtype=np.int64)
        bi = np.zeros(BUCKETS, dtype=np.int64)
        for text in texts:
            c = _codes(text[:20_000])
            if len(c) < 3:
                continue
            b, t = _ids(c)
            tri += np.bincount(t, minlength=BUCKETS)
            bi += np.bincount(b, minlength=BUCKETS)
        cap = np.iinfo(np.uint32).max
        return cls(tri=np.minimum(tri, cap).astype(np.uint32), bi=np.minimum(bi, cap).astype(np.uint32))

    def surprisal(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        """Bits of surprise of each character from the third on, and whether it is ASCII."""
        return self._surprisal(_codes(text))

    def _surprisal(self, c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`surprisal` of the character codes ``c`` (:func:`_codes`)."""
        if len(c) < 3:
            return np.zeros(0), np.zeros(0, dtype=bool)
        b, t = _ids(c)
        p = (self.tri[t] + _ALPHA) / (self.bi[b] + _ALPHA * _VOCAB)
        return -np.log2(np.minimum(p, 1.0)), c[2:] < 128

    def score(self, text: str) -> float:
        """The highest mean surprisal of any 40-character all-ASCII window with 4+ spaces (else 0).

        Long prompts are scored on their first and last 4,000 characters: suffix
        attacks sit at the end, and the cost stays bounded.
        """
        if len(text) > 8_000:
            text = text[:4_000] + " " + text[-4_000:]
        c = _codes(text)
        s, ascii_ = self._surprisal(c)
        if len(s) < WINDOW:
            return 0.0
        cs = np.concatenate([[0.0], np.cumsum(s)])
        means = (cs[WINDOW:] - cs[:-WINDOW]) / WINDOW
        bad = np.concatenate([[0], np.cumsum(~ascii_)])
        ok = (bad[WINDOW:] - bad[:-WINDOW]) == 0
        # an adversarial suffix is a run of tokens; one opaque token (a hash, a key, base64, a UUID) is not, and
        # it is as surprising: a window needs MIN_GAPS spaces to count
        gaps = np.concatenate([[0], np.cumsum(c[2:] == 32)])  # the scored characters (the third on) that are spaces
        ok &= (gaps[WINDOW:] - gaps[:-WINDOW]) >= MIN_GAPS
        return float(means[ok].max()) if ok.any() else 0.0
