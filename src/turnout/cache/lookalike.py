"""The look-alike guard: a semantic hit is refused when the two questions differ in a detail that changes the answer.

Sentence embeddings place "Can I take 5 mg of melatonin?" and "Can I take 50 mg
of melatonin?" next to each other, and "Is it safe to drink while on
azithromycin?" next to the same question without the drug or with "not".
Each check below extracts one kind of detail from both questions and refuses
the hit when they disagree; the verdict names the check and the details, so a
blocked hit can be explained in the log.

=============  ====================================================================  ==============================
check          what is extracted                                                     refused when
=============  ====================================================================  ==============================
``numbers``    digits (``3``, ``192.9``, ``1,000``, ``1/2``, ``3rd``) and written     the sets of values differ
               numbers (``twenty five``, ``a dozen``, ``twice``, ``third``)
``negation``   not, no, never, without, none, nothing, nor, cannot, ``n't`` ...      the counts differ
``exclusion``  apart from, other than, besides, except, instead of, rather than ...  the sets differ
``units``      units and quantities: mg, ml, kg, lb, %, hours, days, weeks, years     the sets of (canonical) units
               ... (``lbs``/``pounds`` -> ``lb``, ``hrs`` -> ``hour``)                  differ
``entities``   capitalised words inside a sentence, acronyms (HIV, MRI), words       an entity of one question
               mixing letters and digits (B12, H1N1), and drug-like words by         appears nowhere in the other
               suffix (-mycin, -cillin, -azole, -pril, -statin, -olol ...)            (case and spacing ignored)
=============  ====================================================================  ==============================

Everything runs on regular expressions and small word lists shipped here:
nothing to download, about 20-40 µs per pair. The guard only ever *removes*
hits, so it costs hit rate on true duplicates whose rewrite changed a detail
("192.9" -> "about 193 lbs"); ``turnout guards eval cache`` reports both
rates with and without it, and per check.

Example::

    guard = LookalikeGuard()
    v = guard.check("Can I take 5 mg of melatonin?", "Can I take 50 mg of melatonin?")
    v.ok, v.check, v.reason    # (False, 'numbers', 'numbers differ: cached {5} vs new {50}')
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from functools import cached_property

#: every check, in the order they are tried (cheapest and most telling first)
CHECKS: tuple[str, ...] = ("numbers", "negation", "exclusion", "units", "entities")

_ONES = {
    "zero": 0,
    "two": 2,
    "three": 3,
    "four": 4,
    "five": 5,
    "six": 6,
    "seven": 7,
    "eight": 8,
    "nine": 9,
    "ten": 10,
    "eleven": 11,
    "twelve": 12,
    "thirteen": 13,
    "fourteen": 14,
    "fifteen": 15,
    "sixteen": 16,
    "seventeen": 17,
    "eighteen": 18,
    "nineteen": 19,
}
_TENS = {"twenty": 20, "thirty": 30, "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70, "eighty": 80, "ninety": 90}
_SCALES = {"hundred": 100, "thousand": 1000, "million": 10**6, "billion": 10**9}
#: words that stand for a number on their own. "one" is left out: it is mostly a pronoun ("the other one",
#: "no one"); it counts only inside a larger number ("twenty one", "one hundred"). "first"/"second" are left
#: out too ("at first", "a second opinion").
_SOLO: dict[str, float] = {
    "dozen": 12,
    "twice": 2,
    "thrice": 3,
    "half": 0.5,
    "quarter": 0.25,
    "third": 3,
    "fourth": 4,
    "fifth": 5,
    "sixth": 6,
    "seventh": 7,
    "eighth": 8,
    "ninth": 9,
    "tenth": 10,
    "eleventh": 11,
    "twelfth": 12,
}

_NUMBER = re.compile(r"(?<![\w.])(\d+(?:,\d{3})+|\d+(?:\.\d+)?|\.\d+)(?:\s*/\s*(\d+))?")
_WORD = re.compile(r"[a-z]+(?:'[a-z]+)?")

_NEGATION = re.compile(
    r"\b(?:not|no|never|without|none|nothing|nobody|nowhere|neither|nor|cannot|cant|dont|doesnt|didnt|isnt|arent|"
    r"wasnt|werent|wont|wouldnt|shouldnt|couldnt|havent|hasnt|hadnt)\b|n't\b"
)
_EXCLUSION = re.compile(r"\b(apart from|aside from|other than|besides|except|excluding|instead of|rather than|in addition to)\b")

#: unit word -> canonical unit. Only words that are units whenever they appear ("second" and "minute" are
#: left to their plurals and abbreviations; "m" and "l" alone are too ambiguous).
_UNITS: dict[str, str] = {
    **dict.fromkeys(("mg", "milligram", "milligrams", "mgs"), "mg"),
    **dict.fromkeys(("mcg", "µg", "microgram", "micrograms", "ug"), "mcg"),
    **dict.fromkeys(("g", "gram", "grams", "gm", "gms"), "g"),
    **dict.fromkeys(("kg", "kgs", "kilo", "kilos", "kilogram", "kilograms"), "kg"),
    **dict.fromkeys(("lb", "lbs", "pound", "pounds"), "lb"),
    **dict.fromkeys(("oz", "ounce", "ounces"), "oz"),
    **dict.fromkeys(("ml", "milliliter", "milliliters", "millilitre", "millilitres", "cc"), "ml"),
    **dict.fromkeys(("liter", "liters", "litre", "litres"), "l"),
    **dict.fromkeys(("iu", "ius"), "iu"),
    **dict.fromkeys(("%", "percent", "percentage"), "%"),
    **dict.fromkeys(("cm", "centimeter", "centimeters", "centimetre", "centimetres"), "cm"),
    **dict.fromkeys(("mm", "millimeter", "millimeters", "millimetre", "millimetres"), "mm"),
    **dict.fromkeys(("inch", "inches"), "inch"),
    **dict.fromkeys(("ft", "foot", "feet"), "ft"),
    **dict.fromkeys(("mile", "miles"), "mile"),
    **dict.fromkeys(("km", "kilometer", "kilometers", "kilometre", "kilometres"), "km"),
    **dict.fromkeys(("sec", "secs", "seconds"), "second"),
    **dict.fromkeys(("min", "mins", "minutes"), "minute"),
    **dict.fromkeys(("h", "hr", "hrs", "hour", "hours"), "hour"),
    **dict.fromkeys(("day", "days", "daily"), "day"),
    **dict.fromkeys(("wk", "wks", "week", "weeks", "weekly"), "week"),
    **dict.fromkeys(("mo", "mos", "month", "months", "monthly"), "month"),
    **dict.fromkeys(("yr", "yrs", "year", "years", "yearly", "y/o", "yo"), "year"),
    **dict.fromkeys(("degree", "degrees", "°", "°f", "°c"), "degree"),
    **dict.fromkeys(("bpm",), "bpm"),
    **dict.fromkeys(("mmhg",), "mmhg"),
    **dict.fromkeys(("calorie", "calories", "kcal", "cal"), "kcal"),
    **dict.fromkeys(("times",), "times"),
}
_UNIT_TOKEN = re.compile(r"y/o|°[fc]?|%|[a-zµ]+")
#: a unit counts when it measures something: after a number ("5 mg", "3-4 days", "twenty years", "2000 iu/day"),
#: asked for ("how many hours", "the number of days") or numbered ("day 11"). Alone, "the other day" is a figure
#: of speech more often than a quantity.
_QUANTIFIED = re.compile(
    r"(?:\d|/|\b(?:how many|how much|number of|zero|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve|"
    r"teen|twenty|thirty|forty|fifty|sixty|seventy|eighty|ninety|hundred|thousand|dozen|few|several|couple of|"
    r"half an?|an?|per|every|each|one))[\s-]*$"
)
_NUMBERED = re.compile(r"[\s#]+\d")  # a separator: the "h" of "H1N1" is no hour

#: capitalised words that name no thing: sentence-initial habits and titles
_NOT_ENTITIES = frozenset(
    {
        "i",
        "i'm",
        "i've",
        "i'd",
        "i'll",
        "im",
        "ive",
        "id",
        "dr",
        "mr",
        "mrs",
        "ms",
        "ok",
        "okay",
        "hi",
        "hello",
        "please",
        "thanks",
        "thank",
        "hey",
        "dear",
        "sir",
        "madam",
        "doctor",
        "yes",
        "no",
        "also",
        "and",
        "but",
        "or",
    }
)
#: suffixes of drug names (INN stems); a word ending in one is an entity in any case and position
_DRUG_SUFFIXES = (
    "mycin",
    "micin",
    "cillin",
    "cycline",
    "oxacin",
    "azole",
    "pril",
    "sartan",
    "olol",
    "statin",
    "prazole",
    "tidine",
    "dipine",
    "mab",
    "tinib",
    "ciclovir",
    "clovir",
    "navir",
    "caine",
    "azepam",
    "azolam",
    "barbital",
    "oxetine",
    "triptyline",
    "triptan",
    "setron",
    "gliptin",
    "glitazone",
    "lukast",
    "dronate",
    "profen",
    "sone",
    "olone",
    "semide",
    "thiazide",
    "parin",
    "xaban",
    "gatran",
    "terol",
    "tropium",
    "zosin",
    "formin",
    "fenac",
    "coxib",
    "pramine",
    "peridol",
    "apine",
    "idone",
)
_TOKEN = re.compile(r"[^\W_][\w'\-]*", re.UNICODE)


def _fold(text: str) -> str:
    # typographic apostrophes and compatibility forms, so "don’t" and "don't" read alike
    return unicodedata.normalize("NFKC", text).replace("\u2019", "'").replace("\u2018", "'").lower()


def _value(number: float) -> str:
    """A number as a canonical string: 1000.0 -> ``1000``, 0.50 -> ``0.5``, 2400001.0 -> ``2400001``."""
    return str(int(number)) if float(number).is_integer() else format(number, ".12g")


def numbers(text: str) -> tuple[str, ...]:
    """The numeric values ``text`` mentions, digits and words alike, as canonical strings, sorted, with repeats.

    Repeats count: "3 or 4 years ... 3 months" and "4 or 4 years ... 3 months" differ.

    >>> numbers("Twenty five mg twice a day for 3 weeks, 1/2 tablet, 3 times")
    ('0.5', '2', '25', '3', '3')
    """
    folded = _fold(text)
    found: list[str] = []
    for m in _NUMBER.finditer(folded):
        whole, denominator = m.group(1).replace(",", ""), m.group(2)
        if denominator is not None and int(denominator) != 0:
            found.append(_value(float(whole) / int(denominator)))
        else:
            found.append(_value(float(whole)))
    total: float | None = None  # a written number being read ("two hundred and five")
    current = 0.0
    for word in [*_WORD.findall(folded), ""]:  # "" closes a number at the end
        if word in _ONES or word in _TENS:
            current += _ONES.get(word, 0) + _TENS.get(word, 0)
            total = total or 0.0
        elif word == "one" and total is not None:
            current += 1
        elif word in _SCALES:
            current = max(current, 1.0) * _SCALES[word]
            total = (total or 0.0) + current
            current = 0.0
        elif word == "and" and total is not None:
            continue
        else:
            if total is not None:
                found.append(_value(total + current))
            total, current = None, 0.0
            if word in _SOLO:
                found.append(_value(_SOLO[word]))
    return tuple(sorted(found))


def negations(text: str) -> int:
    """How many negation markers ``text`` holds ("not", "never", "without", "n't" ...)."""
    return len(_NEGATION.findall(_fold(text)))


def exclusions(text: str) -> frozenset[str]:
    """The exclusion phrases of ``text`` ("apart from", "other than", "besides" ...)."""
    return frozenset(_EXCLUSION.findall(_fold(text)))


def units(text: str) -> tuple[str, ...]:
    """The canonical units of the quantities ``text`` mentions, sorted, with repeats.

    >>> units("193 lbs, 2000 IU/day for 3 hrs, on day 11, the other day")
    ('day', 'day', 'hour', 'iu', 'lb')
    """
    folded = _fold(text)
    found: list[str] = []
    for m in _UNIT_TOKEN.finditer(folded):
        unit = _UNITS.get(m.group(0))
        if unit is not None and (
            _QUANTIFIED.search(folded, max(0, m.start() - 12), m.start()) or _NUMBERED.match(folded, m.end())
        ):
            found.append(unit)
    return tuple(sorted(found))


def entities(text: str) -> frozenset[str]:
    """Words of ``text`` that name something, casefolded: capitalised inside a sentence, acronyms, codes, drugs.

    >>> sorted(entities("Is it safe to take Azithromycin and ibuprofen with HIV? My B12 is low."))
    ['azithromycin', 'b12', 'hiv', 'ibuprofen']
    """
    out: set[str] = set()
    text = unicodedata.normalize("NFKC", text).replace("\u2019", "'")
    last = 0
    for m in _TOKEN.finditer(text):
        # a word starts a sentence when nothing but spaces and sentence punctuation precede it
        initial = last == 0 or any(c in ".!?:;\n" for c in text[last : m.start()])
        last = m.end()
        word = m.group(0).strip("'-")
        if not word:
            continue
        low = word.lower()
        base = low.removesuffix("'s")
        if base in _NOT_ENTITIES or len(base) < 2:
            continue
        acronym = len(word) >= 2 and word.isupper() and word.isalpha()
        coded = any(c.isdigit() for c in word) and any(c.isalpha() for c in word)
        capitalised = word[0].isupper() and not initial
        drug = len(base) > 6 and base.endswith(_DRUG_SUFFIXES)
        if acronym or coded or capitalised or drug:
            out.add(base)
    return frozenset(out)


def _squash(text: str) -> str:
    """Lowercase letters and digits only: "knock out rose" and "knockout rose" contain the same entity."""
    return "".join(c for c in _fold(text) if c.isalnum())


class Features:
    """One question's details, each extracted on first use and kept: a lookup compares one new question with
    several cached ones, and the checks stop at the first that fails."""

    def __init__(self, text: str) -> None:
        self.text = text

    # each calls the module's function of the same name, once
    @cached_property
    def numbers(self) -> tuple[str, ...]:
        return numbers(self.text)

    @cached_property
    def negations(self) -> int:
        return negations(self.text)

    @cached_property
    def exclusions(self) -> frozenset[str]:
        return exclusions(self.text)

    @cached_property
    def units(self) -> tuple[str, ...]:
        return units(self.text)

    @cached_property
    def entities(self) -> frozenset[str]:
        return entities(self.text)

    @cached_property
    def squashed(self) -> str:
        return _squash(self.text)


@dataclass(frozen=True, slots=True)
class GuardVerdict:
    """The guard's answer for one pair: ``ok`` (the hit may be served) or the ``check`` that refused and why."""

    ok: bool
    check: str | None = None
    reason: str | None = None


_PASS = GuardVerdict(True)


def _show(values: frozenset[str] | tuple[str, ...]) -> str:
    return "{" + ", ".join(sorted(values)) + "}" if values else "none"


@dataclass(frozen=True)
class LookalikeGuard:
    """Refuses a semantic hit whose cached question differs from the new one in a telling detail.

    Each flag turns one check of :data:`CHECKS` on or off (all on by default;
    ``turnout guards eval cache`` measures each). Stateless and thread-safe.

    Example::

        guard = LookalikeGuard()
        guard.check("Is ibuprofen safe in pregnancy?", "Is ibuprofen not safe in pregnancy?").reason
        # 'negation differs: cached 0 vs new 1'
        guard.check("How long does a cold last?", "How long do colds usually last?").ok   # True
    """

    numbers: bool = True
    negation: bool = True
    exclusion: bool = True
    units: bool = True
    entities: bool = True

    @classmethod
    def only(cls, *checks: str) -> LookalikeGuard:
        """A guard running just ``checks`` (names from :data:`CHECKS`); ``only()`` runs none."""
        unknown = set(checks) - set(CHECKS)
        if unknown:
            raise ValueError(f"unknown look-alike check(s) {sorted(unknown)}; known: {', '.join(CHECKS)}")
        return cls(**{c: c in checks for c in CHECKS})

    @property
    def enabled(self) -> tuple[str, ...]:
        """The names of the checks this guard runs, in order."""
        return tuple(c for c in CHECKS if getattr(self, c))

    @staticmethod
    def features(text: str) -> Features:
        """``text``'s details for :meth:`check`, extracted as the checks need them and kept: pass the same
        object for a question checked against several others."""
        return Features(text)

    def check(self, cached: str | Features, new: str | Features) -> GuardVerdict:
        """Whether the answer to ``cached`` may be served for ``new`` (the first failing check says why).

        Each is a question's text or its :meth:`features` (the same verdicts; the details are extracted once).
        """
        c = cached if isinstance(cached, Features) else Features(cached)
        n = new if isinstance(new, Features) else Features(new)
        if self.numbers:
            a, b = c.numbers, n.numbers
            if a != b:
                return GuardVerdict(False, "numbers", f"numbers differ: cached {_show(a)} vs new {_show(b)}")
        if self.negation:
            na, nb = c.negations, n.negations
            if na != nb:
                return GuardVerdict(False, "negation", f"negation differs: cached {na} vs new {nb}")
        if self.exclusion:
            ea, eb = c.exclusions, n.exclusions
            if ea != eb:
                return GuardVerdict(False, "exclusion", f"exclusion differs: cached {_show(ea)} vs new {_show(eb)}")
        if self.units:
            ua, ub = c.units, n.units
            if ua != ub:
                return GuardVerdict(False, "units", f"units differ: cached {_show(ua)} vs new {_show(ub)}")
        if self.entities:
            squashed_cached, squashed_new = c.squashed, n.squashed
            only_cached = frozenset(e for e in c.entities if _squash(e) not in squashed_new)
            only_new = frozenset(e for e in n.entities if _squash(e) not in squashed_cached)
            if only_cached or only_new:
                return GuardVerdict(
                    False, "entities", f"entities differ: only cached {_show(only_cached)}, only new {_show(only_new)}"
                )
        return _PASS


__all__ = ["CHECKS", "Features", "GuardVerdict", "LookalikeGuard", "entities", "exclusions", "negations", "numbers", "units"]
