"""RedisCounters against a real redis-server (tests/conftest.py); skipped with a reason when absent."""

from __future__ import annotations

import threading
import uuid

import pytest

from turnout.errors import BudgetExceededError, StateError
from turnout.gateway.keys import KeySpec, KeyStore, hash_key
from turnout.state import Counters, RedisCounters


@pytest.fixture
def prefix() -> str:
    # every test writes under its own prefix: the server is shared by the session
    return f"test-{uuid.uuid4().hex[:8]}:"


def test_redis_counters_incr_and_get(redis_url: str, prefix: str) -> None:
    c = RedisCounters(redis_url, prefix=prefix)
    try:
        c.ping()
        assert isinstance(c, Counters)
        assert c.get("x") == 0.0
        assert c.incr("x", 0.125) == pytest.approx(0.125)
        assert c.incr("x", 1.5) == pytest.approx(1.625)
        assert RedisCounters(redis_url, prefix=prefix).get("x") == pytest.approx(1.625)
        assert RedisCounters(redis_url, prefix=prefix + "other:").get("x") == 0.0
    finally:
        c.close()


def test_redis_increments_from_many_clients_are_atomic(redis_url: str, prefix: str) -> None:
    clients = [RedisCounters(redis_url, prefix=prefix) for _ in range(4)]

    def work(c: RedisCounters) -> None:
        for _ in range(250):
            c.incr("n", 0.5)

    threads = [threading.Thread(target=work, args=(c,)) for c in clients]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert clients[0].get("n") == pytest.approx(500.0)
    for c in clients:
        c.close()


def test_two_keystores_sharing_redis_see_each_others_spend(redis_url: str, prefix: str) -> None:
    # the scaled-out case: two gateway replicas, one budget
    spec = KeySpec("team", hash_key("sk-team"), budget_usd=1.0)
    a = KeyStore([spec], RedisCounters(redis_url, prefix=prefix))
    b = KeyStore([spec], RedisCounters(redis_url, prefix=prefix))
    a.record_spend(a.authenticate("sk-team"), 0.6)
    assert b.spent(spec) == pytest.approx(0.6)
    b.check_budget(spec)  # 0.6 < 1.0
    b.record_spend(spec, 0.5)
    assert a.spent(spec) == pytest.approx(1.1)
    with pytest.raises(BudgetExceededError, match=r"\$1\.1 of its \$1 budget"):
        a.check_budget(spec)


def test_unreachable_redis_raises_a_state_error_naming_the_url() -> None:
    pytest.importorskip("redis")
    c = RedisCounters("redis://127.0.0.1:1/0", socket_timeout=0.5)
    with pytest.raises(StateError, match=r"redis://127\.0\.0\.1:1/0"):
        c.ping()
    with pytest.raises(StateError, match="increment"):
        c.incr("x", 1.0)
    with pytest.raises(StateError, match="read 'x'.*is redis-server running"):
        c.get("x")


def test_messages_mask_the_password_of_the_url() -> None:
    pytest.importorskip("redis")
    c = RedisCounters("redis://app:s3cret@127.0.0.1:1/0", socket_timeout=0.5)
    with pytest.raises(StateError) as info:
        c.get("x")
    assert "s3cret" not in str(info.value) and "redis://app:***@127.0.0.1:1/0" in str(info.value)
    assert "s3cret" not in repr(c) and c.url == "redis://app:s3cret@127.0.0.1:1/0"
    with pytest.raises(StateError, match="invalid Redis URL") as info:
        RedisCounters("http://:hunter2@127.0.0.1/0")
    assert "hunter2" not in str(info.value)
