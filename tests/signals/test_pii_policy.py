"""PiiPolicy: per-type actions, the strictest wins, and config errors that name the key and the fix."""

from __future__ import annotations

import pytest

from turnout.errors import ConfigError
from turnout.signals.pii import DEFAULT_TYPES, PiiDetector, PiiType
from turnout.signals.pii_policy import PiiAction, PiiPolicy, PiiVerdict
from turnout.signals.redact import redact, restore

TEXT = "mail a@b.io, card 4111 1111 1111 1111, key AKIAIOSFODNN7EXAMPLE"


def decide(policy: PiiPolicy, text: str = TEXT) -> PiiVerdict:
    return policy.decide(PiiDetector(policy.detect_types, min_score=policy.min_score).find(text))


def test_default_policy_redacts_and_restores() -> None:
    policy = PiiPolicy.from_config({})
    assert (policy.action, policy.types, policy.restore) == (PiiAction.REDACT, DEFAULT_TYPES, True)
    verdict = decide(policy)
    assert verdict.action is PiiAction.REDACT and not verdict.blocked
    assert verdict.counts == {"CREDIT_CARD": 1, "EMAIL": 1, "SECRET": 1}
    redacted, mapping = redact(TEXT, verdict.to_redact)
    assert redacted == "mail [EMAIL_1], card [CREDIT_CARD_1], key [SECRET_1]"
    assert restore(redacted, mapping) == TEXT


def test_strictest_action_wins_and_reason_has_no_values() -> None:
    policy = PiiPolicy.from_config({"action": "redact", "per_type": {"SECRET": "block", "email_address": "allow"}})
    verdict = decide(policy)
    assert verdict.blocked and verdict.to_redact == ()
    assert verdict.by_type == {"CREDIT_CARD": PiiAction.REDACT, "EMAIL": PiiAction.ALLOW, "SECRET": PiiAction.BLOCK}
    assert verdict.reason == "pii: block (SECRET x1); redact (CREDIT_CARD x1); allow (EMAIL x1)"
    assert "AKIA" not in verdict.reason and "a@b.io" not in verdict.reason


def test_private_only_and_partial_redaction() -> None:
    private = decide(PiiPolicy.from_config({"action": "private_only"}))
    assert private.private_only and private.to_redact == ()
    # only the types whose action is redact are redacted; allowed ones stay
    partial = decide(PiiPolicy.from_config({"action": "redact", "per_type": {"EMAIL": "allow"}}))
    assert [s.type for s in partial.to_redact] == [PiiType.CREDIT_CARD, PiiType.SECRET]


def test_nothing_found_is_allow() -> None:
    verdict = decide(PiiPolicy.from_config({"action": "block"}), "nothing personal here")
    assert (verdict.action, verdict.counts, verdict.reason) == (PiiAction.ALLOW, {}, "pii: none found")


def test_types_outside_the_list_are_allowed() -> None:
    policy = PiiPolicy.from_config({"action": "block", "types": ["SSN"]})
    assert policy.action_for(PiiType.SSN) is PiiAction.BLOCK
    assert policy.action_for(PiiType.EMAIL) is PiiAction.ALLOW
    assert decide(policy, "mail a@b.io").action is PiiAction.ALLOW  # not even looked for


@pytest.mark.parametrize(
    "raw,match",
    [
        ({"acton": "redact"}, r"key 'pii.acton': unknown key 'acton'.*fix: use one of: action"),
        ({"action": "shred"}, r"key 'pii.action': unknown action 'shred'.*allow, redact, private_only, block"),
        ({"types": "EMAIL"}, r"key 'pii.types': must be a list"),
        ({"types": ["EMAIL", "FONE"]}, r"key 'pii.types': unknown PII type 'FONE'"),
        ({"per_type": {"SECRET": "burn"}}, r"key 'pii.per_type.SECRET': unknown action 'burn'"),
        ({"per_type": ["SECRET"]}, r"key 'pii.per_type': must be a mapping"),
        ({"restore": "yes"}, r"key 'pii.restore': must be true or false"),
        ({"min_score": 3}, r"key 'pii.min_score'"),
        ({"response": {"style": "blur"}}, r"key 'pii.response.style': unknown style 'blur'"),
        ({"response": {"colour": 1}}, r"key 'pii.response': unknown response setting"),
    ],
)
def test_config_errors(raw: dict[str, object], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        PiiPolicy.from_config(raw)


def test_config_error_names_the_file() -> None:
    with pytest.raises(ConfigError, match=r"^turnout.yaml, key 'routes.auto.pii.action'"):
        PiiPolicy.from_config({"action": "x"}, key="routes.auto.pii", file="turnout.yaml")


def test_response_settings() -> None:
    policy = PiiPolicy.from_config({"response": {"types": ["SECRET"], "style": "mask"}})
    assert policy.response.types == {PiiType.SECRET} and policy.response.style == "mask"
    assert PiiPolicy.from_config({}).response.types == {PiiType.SECRET, PiiType.CREDIT_CARD, PiiType.IBAN, PiiType.SSN}
