"""PII types, spans and the normalisation table that makes every generator's entity names one vocabulary.

Datasets and detectors name the same thing differently (``PHONE_NUMBER`` and ``PHONE``, ``ADDRESS`` and
``STREET_ADDRESS``, ``LOCATION`` and ``GPE``); :func:`normalise_type` maps them all onto :class:`PiiType`.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class PiiType(StrEnum):
    """The normalised PII types turnout detects (and, for evaluation, the ones it only reads from gold data)."""

    EMAIL = "EMAIL"
    PHONE = "PHONE"
    CREDIT_CARD = "CREDIT_CARD"
    IBAN = "IBAN"
    SSN = "SSN"
    IP_ADDRESS = "IP_ADDRESS"
    SECRET = "SECRET"
    PERSON = "PERSON"
    ADDRESS = "ADDRESS"
    LOCATION = "LOCATION"
    # read from gold data and reported, never detected by turnout today
    ZIP_CODE = "ZIP_CODE"
    DATE_TIME = "DATE_TIME"
    ORGANIZATION = "ORGANIZATION"
    URL = "URL"
    DRIVER_LICENSE = "DRIVER_LICENSE"
    TITLE = "TITLE"


#: the types found by patterns with validation; the goal (micro F1 >= 0.90) is measured over these
STRUCTURED_TYPES: frozenset[PiiType] = frozenset(
    {PiiType.EMAIL, PiiType.PHONE, PiiType.CREDIT_CARD, PiiType.IBAN, PiiType.SSN, PiiType.IP_ADDRESS}
)

#: every name a generator or detector uses -> the normalised type (upper-cased keys; lookups upper-case first)
TYPE_ALIASES: dict[str, PiiType] = {
    # structured
    "EMAIL": PiiType.EMAIL,
    "EMAIL_ADDRESS": PiiType.EMAIL,
    "E_MAIL": PiiType.EMAIL,
    "PHONE": PiiType.PHONE,
    "PHONE_NUMBER": PiiType.PHONE,
    "TELEPHONE": PiiType.PHONE,
    "TELEPHONENUM": PiiType.PHONE,
    "MOBILE": PiiType.PHONE,
    "CREDIT_CARD": PiiType.CREDIT_CARD,
    "CREDIT_CARD_NUMBER": PiiType.CREDIT_CARD,
    "CREDITCARDNUMBER": PiiType.CREDIT_CARD,
    "CC": PiiType.CREDIT_CARD,
    "IBAN": PiiType.IBAN,
    "IBAN_CODE": PiiType.IBAN,
    "SSN": PiiType.SSN,
    "US_SSN": PiiType.SSN,
    "SOCIALNUM": PiiType.SSN,
    "IP_ADDRESS": PiiType.IP_ADDRESS,
    "IP": PiiType.IP_ADDRESS,
    "IPV4": PiiType.IP_ADDRESS,
    "IPV6": PiiType.IP_ADDRESS,
    # secrets
    "SECRET": PiiType.SECRET,
    "API_KEY": PiiType.SECRET,
    "TOKEN": PiiType.SECRET,
    "PASSWORD": PiiType.SECRET,
    "PRIVATE_KEY": PiiType.SECRET,
    "CREDENTIAL": PiiType.SECRET,
    # people and places
    "PERSON": PiiType.PERSON,
    "PER": PiiType.PERSON,
    "NAME": PiiType.PERSON,
    "FIRST_NAME": PiiType.PERSON,
    "LAST_NAME": PiiType.PERSON,
    "GIVENNAME": PiiType.PERSON,
    "SURNAME": PiiType.PERSON,
    "ADDRESS": PiiType.ADDRESS,
    "STREET_ADDRESS": PiiType.ADDRESS,
    "STREET": PiiType.ADDRESS,
    "LOCATION": PiiType.LOCATION,
    "GPE": PiiType.LOCATION,
    "LOC": PiiType.LOCATION,
    "CITY": PiiType.LOCATION,
    "COUNTRY": PiiType.LOCATION,
    "NRP": PiiType.LOCATION,
    # reported only
    "ZIP_CODE": PiiType.ZIP_CODE,
    "ZIPCODE": PiiType.ZIP_CODE,
    "POSTCODE": PiiType.ZIP_CODE,
    "DATE_TIME": PiiType.DATE_TIME,
    "DATE": PiiType.DATE_TIME,
    "TIME": PiiType.DATE_TIME,
    "ORGANIZATION": PiiType.ORGANIZATION,
    "ORGANISATION": PiiType.ORGANIZATION,
    "ORG": PiiType.ORGANIZATION,
    "URL": PiiType.URL,
    "DOMAIN_NAME": PiiType.URL,
    "DOMAIN": PiiType.URL,
    "DRIVER_LICENSE": PiiType.DRIVER_LICENSE,
    "US_DRIVER_LICENSE": PiiType.DRIVER_LICENSE,
    "DRIVERLICENSENUM": PiiType.DRIVER_LICENSE,
    "TITLE": PiiType.TITLE,
    "PREFIX": PiiType.TITLE,
}


def normalise_type(name: str) -> PiiType | None:
    """The normalised type of an entity name from any generator, or None when the name is not in the table.

    >>> normalise_type("PHONE_NUMBER"), normalise_type("gpe"), normalise_type("NOT_A_TYPE")
    (<PiiType.PHONE: 'PHONE'>, <PiiType.LOCATION: 'LOCATION'>, None)
    """
    return TYPE_ALIASES.get(name.strip().upper().replace("-", "_").replace(" ", "_"))


@dataclass(frozen=True, slots=True)
class PiiSpan:
    """One piece of PII found in a text: ``text[start:end] == self.text``.

    ``recognizer`` names the rule that found it (``credit_card``, ``openai_key``, ``person_gazetteer``, ...),
    ``score`` its confidence in [0, 1] (validated checksums score high, shape-only matches lower).
    """

    type: PiiType
    start: int
    end: int
    text: str
    score: float
    recognizer: str
