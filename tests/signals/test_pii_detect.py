"""PiiDetector: each structured type with valid and checksum-failing examples, secrets, names, the type table."""

from __future__ import annotations

import importlib.util
import itertools
import re._parser as sre_parser  # type: ignore[import-not-found]  # private: only to check declared widths
import subprocess
import sys

import pytest

from turnout.errors import ConfigError
from turnout.signals._pii_patterns import card_ok, iban_ok, luhn_ok, ssn_ok
from turnout.signals._pii_secrets import shannon_entropy
from turnout.signals.pii import DEFAULT_TYPES, PiiDetector, PiiType, normalise_type, parse_types

HAS_NAMES = importlib.util.find_spec("names") is not None
ALL = ["EMAIL", "PHONE", "CREDIT_CARD", "IBAN", "SSN", "IP_ADDRESS", "SECRET", "ADDRESS", "LOCATION"] + (
    ["PERSON"] if HAS_NAMES else []
)


@pytest.fixture(scope="module")
def detector() -> PiiDetector:
    return PiiDetector()


def found(detector: PiiDetector, text: str) -> list[tuple[str, str]]:
    return [(s.type.value, s.text) for s in detector.find(text)]


# ------------------------------------------------------------------------------------------- checksums


def test_luhn_and_issuer_ranges() -> None:
    assert luhn_ok("4111111111111111") and not luhn_ok("4111111111111112")
    assert card_ok("4111111111111111")  # Visa 16
    assert card_ok("378282246310005")  # Amex 15
    assert card_ok("5555555555554444")  # Mastercard
    assert not card_ok("1234567812345670")  # passes Luhn, no issuer starts with 12
    assert luhn_ok("1234567812345670")
    assert not card_ok("41111111111111")  # Visa has no 14-digit numbers


def test_iban_mod97_and_country_length() -> None:
    assert iban_ok("GB82WEST12345698765432")
    assert iban_ok("gb82west12345698765432")  # either case
    assert iban_ok("DE89370400440532013000")
    assert not iban_ok("GB82WEST12345698765433")  # check digits fail
    assert not iban_ok("GB82WEST1234569876543")  # one short for GB
    assert not iban_ok("ZZ82WEST12345698765432")  # no such country


def test_ssn_rules() -> None:
    assert ssn_ok("123", "45", "6789")
    for area, group, serial in (
        ("000", "12", "3456"),
        ("666", "12", "3456"),
        ("912", "12", "3456"),
        ("123", "00", "4567"),
        ("123", "45", "0000"),
    ):
        assert not ssn_ok(area, group, serial)


# ------------------------------------------------------------------------------------------- structured types


@pytest.mark.parametrize(
    "text,value",
    [
        ("card 4111 1111 1111 1111 please", "4111 1111 1111 1111"),
        ("card 4111-1111-1111-1111.", "4111-1111-1111-1111"),
        ("amex 3782 822463 10005", "3782 822463 10005"),
        ("number 5555555555554444", "5555555555554444"),
    ],
)
def test_credit_card_valid(detector: PiiDetector, text: str, value: str) -> None:
    assert found(detector, text) == [("CREDIT_CARD", value)]


@pytest.mark.parametrize(
    "text",
    [
        "card 4111 1111 1111 1112 please",  # Luhn fails
        "order 1234567812345670",  # Luhn passes, no issuer
        "card 4111 1111-1111 1111",  # mixed separators
        "id 41111111111111110000",  # too long
    ],
)
def test_credit_card_invalid(detector: PiiDetector, text: str) -> None:
    assert [t for t, _ in found(detector, text) if t == "CREDIT_CARD"] == []


def test_iban_valid_invalid(detector: PiiDetector) -> None:
    assert found(detector, "pay to GB82 WEST 1234 5698 7654 32 today") == [("IBAN", "GB82 WEST 1234 5698 7654 32")]
    assert found(detector, "pay to gb82west12345698765432.") == [("IBAN", "gb82west12345698765432")]
    assert found(detector, "IBAN DE89370400440532013000 is mine") == [("IBAN", "DE89370400440532013000")]
    assert found(detector, "pay to GB82 WEST 1234 5698 7654 33 today") == []
    assert found(detector, "pay to GB82WEST12345698765432X now") == []  # runs on into a word


def test_ssn_valid_invalid(detector: PiiDetector) -> None:
    assert found(detector, "my SSN is 123-45-6789.") == [("SSN", "123-45-6789")]
    assert found(detector, "ssn: 123456789") == [("SSN", "123456789")]  # bare digits need the context word
    assert [t for t, _ in found(detector, "ref 123456789 shipped")] != ["SSN"]
    for bad in ("666-12-3456", "912-12-3456", "123-00-4567", "123-45-0000"):
        assert ("SSN", bad) not in found(detector, f"ssn {bad}")


def test_ip_addresses(detector: PiiDetector) -> None:
    assert found(detector, "from 192.168.1.20, then") == [("IP_ADDRESS", "192.168.1.20")]
    assert found(detector, "host 2001:db8:85a3::8a2e:370:7334 down") == [("IP_ADDRESS", "2001:db8:85a3::8a2e:370:7334")]
    assert found(detector, "v6 fe80::1ff:fe23:4567:890a ok") == [("IP_ADDRESS", "fe80::1ff:fe23:4567:890a")]
    assert found(detector, "from 256.1.1.1 then") == []  # not an address
    assert found(detector, "version 1.2.3.4.5 released") == []
    assert found(detector, "at 10:30:00 we met") == []  # a time, not IPv6
    assert found(detector, "std::vector and a::b") == []


def test_emails(detector: PiiDetector) -> None:
    assert found(detector, "write to Jane.Doe+x@mail.example.co.uk.") == [("EMAIL", "Jane.Doe+x@mail.example.co.uk")]
    assert found(detector, "not an email: a..b@example.com or @example.com or x@y") == []


@pytest.mark.parametrize(
    "text,value",
    [
        ("Call me at +1-202-555-0143.", "+1-202-555-0143"),
        ("Phone: (202) 555-0143 x123", "(202) 555-0143 x123"),
        ("mobile +44 20 7946 0958", "+44 20 7946 0958"),
        ("+41 (0)85 806 98 67 office", "+41 (0)85 806 98 67"),
        ("They're not answering at 9761 9808", "9761 9808"),
        ("tel 202.555.0143", "202.555.0143"),
    ],
)
def test_phones(detector: PiiDetector, text: str, value: str) -> None:
    assert found(detector, text) == [("PHONE", value)]


@pytest.mark.parametrize(
    "text",
    [
        "The meeting is on 2023-01-04.",
        "He lives at 21 3314 Harley Brook Lane",  # a house number, not a phone
        "Order 12345678 shipped",  # bare digits without a phone word
        "Version 3.14 and 2.71",
    ],
)
def test_not_phones(detector: PiiDetector, text: str) -> None:
    assert [t for t, _ in found(detector, text) if t == "PHONE"] == []


# ------------------------------------------------------------------------------------------- secrets


@pytest.mark.parametrize(
    "secret,recognizer",
    [
        ("sk-proj-abc123DEF456ghi789JKL012mno", "openai_key"),
        ("sk-ant-api03-abcdEFGH1234ijklMNOP5678qrst", "openai_key"),
        ("AKIAIOSFODNN7EXAMPLE", "aws_access_key"),
        ("ghp_abcdefghijklmnopqrstuvwxyz0123456789", "github_token"),
        ("github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuv", "github_token"),
        ("xoxb-1234567890-abcdefghij", "slack_token"),
        ("AIzaSyA1234567890abcdefghijklmnopqrstuv", "google_api_key"),
        ("sk_live_4eC39HqLyjWDarjtT1zdp7dc", "stripe_key"),
        ("hf_abcdefghijklmnopqrstuvwxyz01234567", "huggingface_token"),
        ("eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U", "jwt"),
    ],
)
def test_provider_tokens(detector: PiiDetector, secret: str, recognizer: str) -> None:
    spans = detector.find(f"use {secret} for this")
    assert [(s.type, s.text, s.recognizer) for s in spans] == [(PiiType.SECRET, secret, recognizer)]


def test_pem_private_key_block(detector: PiiDetector) -> None:
    block = "-----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEA1234abcd\n+/xyz==\n-----END RSA PRIVATE KEY-----"
    assert found(detector, f"key:\n{block}\nthanks") == [("SECRET", block)]
    # a block cut short is still redacted, up to where its base64 stops
    cut = "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA"
    assert found(detector, cut + "?") == [("SECRET", cut)]
    # a public key is not a secret
    assert found(detector, "-----BEGIN PUBLIC KEY-----\nMIIBIjANBgkq\n-----END PUBLIC KEY-----") == []


def test_generic_assignments(detector: PiiDetector) -> None:
    assert found(detector, 'DB_PASSWORD="S3cr3t!Passw0rd9"') == [("SECRET", "S3cr3t!Passw0rd9")]
    assert found(detector, "api_key: 8f4Kq2LmZ7xWv1Tb9Rr3") == [("SECRET", "8f4Kq2LmZ7xWv1Tb9Rr3")]
    assert found(detector, "Authorization: Bearer abcDEF123456ghiJKL789mnoPQR") == [("SECRET", "abcDEF123456ghiJKL789mnoPQR")]
    # placeholders, environment lookups and low-entropy words are not secrets
    for text in (
        "api_key = os.environ['KEY']",
        "password: changeme123",
        "token=${GITHUB_TOKEN}",
        "password = aaaaaaaaaaaa",
        "secret: your_api_key_here",
        "my password is hunter2",
    ):
        assert found(detector, text) == [], text


def test_token_shapes_without_digits_are_words(detector: PiiDetector) -> None:
    assert found(detector, "see sk-learn-is-a-library-for-ml and sk-abcdefghijklmnopqrstuvwxyz") == []


def test_shannon_entropy() -> None:
    assert shannon_entropy("") == 0.0
    assert shannon_entropy("aaaa") == 0.0
    assert shannon_entropy("abcd") == pytest.approx(2.0)


# ------------------------------------------------------------------------------------------- overlaps, types


def test_overlaps_resolve_by_priority(detector: PiiDetector) -> None:
    # a card number also has a phone's shape, an SSN too; the validated, higher-priority type wins
    assert found(detector, "call 4111 1111 1111 1111") == [("CREDIT_CARD", "4111 1111 1111 1111")]
    assert found(detector, "phone 123-45-6789") == [("SSN", "123-45-6789")]
    assert found(detector, "OPENAI_API_KEY=sk-proj-abc123DEF456ghi789JKL012mno") == [
        ("SECRET", "sk-proj-abc123DEF456ghi789JKL012mno")
    ]
    spans = detector.find("a@b.co 10.0.0.1 4111111111111111")
    assert all(a.end <= b.start for a, b in itertools.pairwise(spans))


def test_normalisation_table() -> None:
    assert normalise_type("PHONE_NUMBER") is normalise_type("phone") is PiiType.PHONE
    assert normalise_type("STREET_ADDRESS") is normalise_type("ADDRESS") is PiiType.ADDRESS
    assert normalise_type("GPE") is normalise_type("LOCATION") is PiiType.LOCATION
    assert normalise_type("US_SSN") is PiiType.SSN
    assert normalise_type("IBAN_CODE") is PiiType.IBAN
    assert normalise_type("EMAIL_ADDRESS") is PiiType.EMAIL
    assert normalise_type("unheard-of") is None


def test_parse_types_and_bad_config() -> None:
    assert parse_types(["phone_number", "EMAIL"]) == {PiiType.PHONE, PiiType.EMAIL}
    with pytest.raises(ConfigError, match="unknown PII type 'FONE'.*use one of"):
        parse_types(["FONE"], key="pii.types")
    with pytest.raises(ConfigError, match="unknown PII type 'DATE_TIME'"):
        parse_types(["DATE_TIME"])  # read from gold data, never detected
    with pytest.raises(ConfigError, match="min_score"):
        PiiDetector(min_score=2)


def test_default_types_and_min_score() -> None:
    assert PiiDetector().types == DEFAULT_TYPES
    text = "reach 9761 9808"  # a weak shape with a context word scores 0.75
    assert PiiDetector(min_score=0.8).find(text) == []
    assert [s.type for s in PiiDetector(min_score=0.5).find(text)] == [PiiType.PHONE]
    assert PiiDetector(["EMAIL"]).find("card 4111 1111 1111 1111, a@b.co")[0].type is PiiType.EMAIL


# ------------------------------------------------------------------------------------------- streaming bounds


def test_declared_widths_cover_each_regex() -> None:
    """``max_width`` is what streaming holds back: it must cover the regex's longest match, plus its peeks."""
    for rec in PiiDetector(ALL).recognizers:
        widest = sre_parser.parse(rec.regex.pattern, rec.regex.flags).getwidth()[1]
        assert widest <= rec.max_width <= widest + 8, rec.name


def test_prefixes_accept_every_prefix_of_a_match() -> None:
    """The streaming prefix regexes must accept each prefix of each match (else a stream would cut too early)."""
    detector = PiiDetector(ALL)
    corpus = (
        "Mail Jane.Doe@mail.example.co.uk, card 4111 1111 1111 1111, GB82 WEST 1234 5698 7654 32, 123-45-6789, "
        "192.168.1.20 and 2001:db8::1, +41 (0)85 806 98 67 office, (202) 555-0143 x123, sk-proj-abc123DEF456ghi789 "
        "AKIAIOSFODNN7EXAMPLE ghp_abcdefghijklmnopqrstuvwxyz0123456789 token=8f4Kq2LmZ7xWv1Tb9Rr3 Bearer "
        "abcDEF123456ghiJKL789mno eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N "
        "-----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEA\n-----END RSA PRIVATE KEY----- Donald van der Voet "
        "and Keira E. Forster live at 12 Baker Street, Rue de Piétrain 371, Suite 992 in Paris, France."
    )
    for rec in detector.recognizers:
        for m in rec.regex.finditer(corpus):
            for k in range(m.start() + 1, m.end() + 1):
                assert rec.prefix.search(corpus, m.start(), k) is not None, (rec.name, corpus[m.start() : k])
                hit = rec.prefix.search(corpus, m.start(), k)
                assert hit is not None and hit.start() == m.start(), (rec.name, corpus[m.start() : k])


# ------------------------------------------------------------------------------------------- names and places


@pytest.mark.skipif(not HAS_NAMES, reason="the 'names' package is not installed (pip install 'turnout[guards]')")
def test_persons_from_census_lists() -> None:
    detector = PiiDetector(["PERSON"])
    assert found(detector, "Yesterday John Wilson met Mr. Okonkwo-Smith.") == [
        ("PERSON", "John Wilson"),
        ("PERSON", "Okonkwo-Smith"),
    ]
    assert found(detector, "My name is Keira E. Forster") == [("PERSON", "Keira E. Forster")]
    assert found(detector, "We wrote about Kevin Berková's Cautionary Tales") == [("PERSON", "Kevin Berková")]
    assert found(detector, "The Quick Brown Fox. It was Monday in Paris.") == []


def test_persons_need_the_extra_when_names_is_absent() -> None:
    # a fresh interpreter where the 'names' package cannot be imported, whatever this one has installed
    code = (
        "import sys; sys.modules['names'] = None\n"
        "from turnout.errors import MissingDependency\n"
        "from turnout.signals.pii import PiiDetector\n"
        "assert PiiDetector().find('a@b.io')  # the default types need no word list\n"
        "try:\n    PiiDetector(['PERSON'])\nexcept MissingDependency as exc:\n    print(exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "pip install 'turnout[guards]'" in out and "'names'" in out


def test_places_and_addresses() -> None:
    detector = PiiDetector(["LOCATION", "ADDRESS"])
    assert found(detector, "She moved from Denmark to New York last year") == [("LOCATION", "Denmark"), ("LOCATION", "New York")]
    assert found(detector, "Send it to 12 Baker Street, Apt. 4 please") == [("ADDRESS", "12 Baker Street"), ("ADDRESS", "Apt. 4")]
    assert found(detector, "Gammelhavn 36 and Rue de Piétrain 371") == [
        ("ADDRESS", "Gammelhavn 36"),
        ("ADDRESS", "Rue de Piétrain 371"),
    ]
    assert found(detector, "We have 12 apples and 3 pears") == []
