from __future__ import annotations

import hashlib

import pytest

from turnout.errors import AuthenticationError, BudgetExceededError, ConfigError, PermissionDeniedError
from turnout.gateway.keys import ANONYMOUS, KeySpec, KeyStore, hash_key
from turnout.state import InMemoryCounters


def _store(counters: InMemoryCounters | None = None) -> KeyStore:
    return KeyStore(
        [
            KeySpec("alice", hash_key("sk-alice"), budget_usd=0.01, allowed=["auto", "small"]),
            KeySpec("bob", hash_key("sk-bob")),
        ],
        counters,
    )


def test_hash_key_is_sha256_hex() -> None:
    assert hash_key("sk-x") == hashlib.sha256(b"sk-x").hexdigest()
    assert len(hash_key("sk-x")) == 64


def test_authenticate_finds_the_key_by_hash_only() -> None:
    store = _store()
    assert store.authenticate("sk-alice").name == "alice"
    assert store.authenticate("sk-bob").name == "bob"
    # the hash itself is not a key
    with pytest.raises(AuthenticationError, match="unknown API key"):
        store.authenticate(hash_key("sk-alice"))


@pytest.mark.parametrize("raw", [None, ""])
def test_missing_key_says_how_to_pass_it(raw: str | None) -> None:
    with pytest.raises(AuthenticationError, match="Authorization: Bearer"):
        _store().authenticate(raw)


def test_unknown_key_is_rejected() -> None:
    with pytest.raises(AuthenticationError, match="Authorization: Bearer"):
        _store().authenticate("sk-mallory")


async def test_open_store_returns_anonymous() -> None:
    store = KeyStore([])
    assert store.open
    assert store.authenticate(None) is ANONYMOUS
    assert store.authenticate("anything") is ANONYMOUS
    store.authorize(ANONYMOUS, "any-model")
    await store.check_budget(ANONYMOUS)


def test_authorize_names_the_allowed_models() -> None:
    store = _store()
    alice = store.authenticate("sk-alice")
    store.authorize(alice, "auto")
    with pytest.raises(PermissionDeniedError, match="'alice' may not use 'gpt-4'.*auto, small"):
        store.authorize(alice, "gpt-4")
    store.authorize(store.authenticate("sk-bob"), "gpt-4")  # no allowed list: everything


async def test_budget_is_enforced_after_spend_reaches_it() -> None:
    counters = InMemoryCounters()
    store = _store(counters)
    alice = store.authenticate("sk-alice")
    await store.check_budget(alice)
    assert await store.record_spend(alice, 0.004) == pytest.approx(0.004)
    await store.check_budget(alice)
    await store.record_spend(alice, 0.007)
    assert await store.spent(alice) == pytest.approx(0.011)
    with pytest.raises(BudgetExceededError, match=r"spent \$0\.011 of its \$0\.01 budget"):
        await store.check_budget(alice)
    # another key's spend is separate; bob has no budget at all
    bob = store.authenticate("sk-bob")
    await store.record_spend(bob, 100.0)
    await store.check_budget(bob)
    assert await store.spent(alice) == pytest.approx(0.011)
    # spend lives in the shared counters: a second store over them sees it
    assert await KeyStore(store.specs, counters).spent(alice) == pytest.approx(0.011)


async def test_negative_spend_is_a_bug() -> None:
    store = _store()
    with pytest.raises(ValueError):
        await store.record_spend(store.specs[0], -1.0)


@pytest.mark.parametrize(
    ("specs", "key"),
    [
        ([KeySpec("a", "sk-raw-key-not-a-hash")], "keys[0].sha256"),
        ([KeySpec("a", hash_key("1")), KeySpec("a", hash_key("2"))], "keys[1].name"),
        ([KeySpec("a", hash_key("1")), KeySpec("b", hash_key("1"))], "keys[1].sha256"),
        ([KeySpec("a", hash_key("1"), budget_usd=-1)], "keys[0].budget_usd"),
        ([KeySpec("a", hash_key("1"), allowed=[])], "keys[0].allowed"),
    ],
)
def test_bad_specs_fail_with_the_key_and_a_fix(specs: list[KeySpec], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        KeyStore(specs)
    assert info.value.key == key
    assert info.value.fix


async def test_a_tiny_budget_is_written_with_its_digits_not_as_zero() -> None:
    store = KeyStore([KeySpec("tiny", hash_key("sk-tiny"), 0.00002, None)], InMemoryCounters())
    tiny = store.authenticate("sk-tiny")
    await store.record_spend(tiny, 0.000031)
    with pytest.raises(BudgetExceededError) as info:
        await store.check_budget(tiny)
    assert "$3.1e-05 of its $2e-05 budget" in str(info.value) and "$0.0000" not in str(info.value)
