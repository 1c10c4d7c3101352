"""Redaction, restoration and the streaming redactor (property: streamed output == one-shot redaction)."""

from __future__ import annotations

import importlib.util
import itertools

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from turnout.signals.pii import PiiDetector, PiiSpan, PiiType
from turnout.signals.redact import PiiMapping, StreamRedactor, StreamRestorer, redact, restore
from turnout.signals.response import PiiResponseCheck, ResponseAction, ResponseCheck, StreamCheck

HAS_NAMES = importlib.util.find_spec("names") is not None
EVERY_TYPE = ["EMAIL", "PHONE", "CREDIT_CARD", "IBAN", "SSN", "IP_ADDRESS", "SECRET", "ADDRESS", "LOCATION"] + (
    ["PERSON"] if HAS_NAMES else []
)
DEFAULT = PiiDetector()
EVERYTHING = PiiDetector(EVERY_TYPE)

PEM = "-----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEA1234abcd\n+/xyz==\n-----END RSA PRIVATE KEY-----"
# fragments a stream is made of: PII, near misses (bad checksums, half markers), and plain text with the characters
# the patterns care about (digits, separators, capitals, newlines)
FRAGMENTS = [
    "jo@example.com",
    "Jane.Doe+x@mail.example.co.uk",
    "4111 1111 1111 1111",
    "4111111111111112",
    "5555555555554444",
    "GB82 WEST 1234 5698 7654 32",
    "GB82WEST12345698765433",
    "123-45-6789",
    "666-12-3456",
    "10.0.0.1",
    "256.1.1.1",
    "2001:db8::1",
    "+1-202-555-0143 ext 12",
    "(202) 555-0143",
    "9761 9808",
    "Phone: ",
    "call me at ",
    "sk-proj-abc123DEF456ghi789JKL012mno",
    "sk-",
    "AKIAIOSFODNN7EXAMPLE",
    "ghp_abcdefghijklmnopqrstuvwxyz0123456789",
    "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
    "eyJ",
    PEM,
    "-----BEGIN",
    "-----BEGIN RSA PRIVATE KEY-----\nMIIE",
    "-----END RSA PRIVATE KEY-----",
    "-----",
    'password: "S3cr3t!Passw0rd9"',
    "api_key=",
    "Bearer abcDEF123456ghiJKL789mnoPQR",
    "John Wilson",
    "Mr. Okonkwo",
    "Keira E. Forster",
    "12 Baker Street",
    "Apt. 4",
    "Paris",
    "New York",
    " ",
    " ",
    "\n",
    ", ",
    ". ",
    "-",
    ":",
    "the ",
    "and ",
    "In ",
    "12",
    "7",
    "x",
    "@",
    "[EMAIL_1]",
]


def one_shot(detector: PiiDetector, text: str, style: str = "placeholder") -> str:
    return redact(text, detector.find(text), style)[0]  # type: ignore[arg-type]


def streamed(detector: PiiDetector, pieces: list[str], style: str = "placeholder") -> str:
    redactor = StreamRedactor(detector, style)  # type: ignore[arg-type]
    return "".join(redactor.feed(p) for p in pieces) + redactor.flush()


def split_at(text: str, cuts: list[int]) -> list[str]:
    points = sorted({0, len(text), *(c % (len(text) + 1) for c in cuts)})
    return [text[a:b] for a, b in itertools.pairwise(points)]


# ------------------------------------------------------------------------------------------- redact and restore


def test_redact_restore_round_trip() -> None:
    text = "Mail ann@example.org, card 4111 1111 1111 1111, again ann@example.org"
    redacted, mapping = redact(text, DEFAULT.find(text))
    assert redacted == "Mail [EMAIL_1], card [CREDIT_CARD_1], again [EMAIL_1]"
    assert mapping.originals == {"[EMAIL_1]": "ann@example.org", "[CREDIT_CARD_1]": "4111 1111 1111 1111"}
    assert restore(redacted, mapping) == text
    answer = "I will charge [CREDIT_CARD_1] and write to [EMAIL_1]; [EMAIL_9] and [PHONE_1] are not ours."
    assert restore(answer, mapping) == (
        "I will charge 4111 1111 1111 1111 and write to ann@example.org; [EMAIL_9] and [PHONE_1] are not ours."
    )


def test_mapping_is_stable_across_messages_of_a_request() -> None:
    mapping = PiiMapping()
    first, _ = redact("from a@x.io to b@x.io", DEFAULT.find("from a@x.io to b@x.io"), mapping=mapping)
    second, _ = redact("cc b@x.io and c@x.io", DEFAULT.find("cc b@x.io and c@x.io"), mapping=mapping)
    assert (first, second) == ("from [EMAIL_1] to [EMAIL_2]", "cc [EMAIL_2] and [EMAIL_3]")
    assert len(mapping) == 3


def test_styles() -> None:
    text = "card 4111 1111 1111 1111"
    assert one_shot(DEFAULT, text, "type") == "card [CREDIT_CARD]"
    assert one_shot(DEFAULT, text, "mask") == "card " + "*" * 19
    with pytest.raises(ValueError, match="unknown redaction style"):
        redact(text, [], "blur")  # type: ignore[arg-type]


def test_overlapping_spans_are_refused() -> None:
    a = PiiSpan(PiiType.EMAIL, 0, 5, "abcde", 1.0, "t")
    b = PiiSpan(PiiType.PHONE, 3, 8, "defgh", 1.0, "t")
    with pytest.raises(ValueError, match="overlapping spans 0-5 and 3-8"):
        redact("abcdefgh", [a, b])


@given(st.lists(st.integers(min_value=0, max_value=200), max_size=8))
def test_stream_restorer_equals_restore(cuts: list[int]) -> None:
    text = "ok [EMAIL_1], [CREDIT_CARD_1] and [EMAIL_2] but not [EMAIL_3] or [EMAIL"
    _, mapping = redact("a@x.io b@x.io 4111 1111 1111 1111", DEFAULT.find("a@x.io b@x.io 4111 1111 1111 1111"))
    restorer = StreamRestorer(mapping)
    out = "".join(restorer.feed(p) for p in split_at(text, cuts)) + restorer.flush()
    assert out == restore(text, mapping)


# ------------------------------------------------------------------------------------------- streaming property


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.sampled_from(FRAGMENTS), min_size=1, max_size=25),
    st.lists(st.integers(min_value=0, max_value=5000), max_size=30),
)
def test_streamed_equals_one_shot_default_types(fragments: list[str], cuts: list[int]) -> None:
    text = "".join(fragments)
    assert streamed(DEFAULT, split_at(text, cuts)) == one_shot(DEFAULT, text)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.sampled_from(FRAGMENTS), min_size=1, max_size=25),
    st.lists(st.integers(min_value=0, max_value=5000), max_size=30),
)
def test_streamed_equals_one_shot_every_type(fragments: list[str], cuts: list[int]) -> None:
    text = "".join(fragments)
    assert streamed(EVERYTHING, split_at(text, cuts)) == one_shot(EVERYTHING, text)


@settings(max_examples=200, deadline=None)
@given(
    st.text(alphabet="0123456789 -.@:+()xABCDEFGHIJKLMNOPQRSTabcdefghijksk_=\n", max_size=120),
    st.lists(st.integers(min_value=0, max_value=200), max_size=20),
)
def test_streamed_equals_one_shot_random_characters(text: str, cuts: list[int]) -> None:
    assert streamed(DEFAULT, split_at(text, cuts)) == one_shot(DEFAULT, text)


def test_streamed_one_character_at_a_time() -> None:
    text = "".join(FRAGMENTS)
    assert streamed(EVERYTHING, list(text)) == one_shot(EVERYTHING, text)


# ------------------------------------------------------------------------------------------- how much is held back


def test_plain_prose_is_held_back_little() -> None:
    redactor = StreamRedactor(DEFAULT)
    prose = "The quick brown fox jumps over the lazy dog; then it rests. " * 20
    held = []
    for word in prose.split(" "):
        redactor.feed(word + " ")
        held.append(redactor.held)
    # with the default types only a token being written can grow into a match: at most a word or so is held
    assert max(held) <= 12


def test_pem_block_is_held_until_its_end_line() -> None:
    redactor = StreamRedactor(DEFAULT, "type")
    out = [redactor.feed("here: "), redactor.feed("-----BEGIN RSA PRIVATE KEY-----\n")]
    out.append(redactor.feed("MIIEpAIBAAKCAQEA1234abcd\n" * 20))
    assert "MIIE" not in "".join(out)  # the key body never leaves while the block is open
    assert redactor.held > 500
    out.append(redactor.feed("-----END RSA PRIVATE KEY-----\nbye"))
    assert redactor.held <= 3  # released as soon as the END line is complete
    out.append(redactor.flush())
    assert "".join(out) == "here: [SECRET]\nbye"


def test_hold_never_exceeds_the_declared_bound_outside_pem() -> None:
    bound = max(w for name, w in EVERYTHING.hold_bounds().items() if name not in ("private_key", "jwt"))
    redactor = StreamRedactor(EVERYTHING)
    for fragment in FRAGMENTS * 3:
        if "BEGIN" in fragment or fragment.startswith("eyJ"):
            continue
        redactor.feed(fragment)
        # a candidate straddling the frontier can add its own width once more
        assert redactor.held <= 2 * bound
    redactor.flush()


def test_stream_records_spans_at_stream_positions() -> None:
    redactor = StreamRedactor(DEFAULT)
    text = "x" * 100 + " a@b.io " + "y" * 100
    for i in range(0, len(text), 7):
        redactor.feed(text[i : i + 7])
    redactor.flush()
    assert [(s.type, s.start, s.end, s.text) for s in redactor.spans] == [(PiiType.EMAIL, 101, 107, "a@b.io")]


# ------------------------------------------------------------------------------------------- response check hook


def test_pii_response_check_whole_and_streamed() -> None:
    check = PiiResponseCheck.default()
    assert isinstance(check, ResponseCheck)
    clean = check.check("nothing to see here, mail me at a@b.io")
    assert (clean.action, clean.text, clean.findings) == (ResponseAction.PASS, "nothing to see here, mail me at a@b.io", {})
    answer = "Use AKIAIOSFODNN7EXAMPLE and card 4111 1111 1111 1111."
    whole = check.check(answer)
    assert whole.action is ResponseAction.MODIFY
    assert whole.text == "Use [SECRET] and card [CREDIT_CARD]."
    assert whole.findings == {"CREDIT_CARD": 1, "SECRET": 1}
    stream = check.stream()
    assert isinstance(stream, StreamCheck)
    pieces = [answer[i : i + 3] for i in range(0, len(answer), 3)]
    assert "".join(stream.feed(p) for p in pieces) + stream.flush() == whole.text
    assert stream.verdict().findings == whole.findings
