"""turnout.gateway.balance: prefix keys, every strategy's contract, the hash rings, and the simulator that measures them."""

import importlib.util
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from turnout.errors import ConfigError, RoutingError
from turnout.gateway.balance import (
    BalanceKey,
    DualMap,
    EndpointView,
    HashRing,
    balancer_names,
    create_balancer,
    estimate_ttft,
    prefix_key,
)

BENCH = Path(__file__).resolve().parents[2] / "bench"
SYSTEM = "You are the support assistant of ACME. Answer politely and cite the manual. " * 30  # ~2,300 chars


def _load(name: str):
    """A bench script as a module (registered under its name: dataclasses look their module up)."""
    if name in sys.modules:
        return sys.modules[name]
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))  # cache_affinity imports its sibling _affinity_sim
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def views(n: int, **kw) -> list[EndpointView]:
    return [EndpointView(f"ep-{i}", **kw) for i in range(n)]


def conversation(first_user: str, turns: int, system: str = SYSTEM) -> list[dict]:
    msgs = [{"role": "system", "content": system}, {"role": "user", "content": first_user}]
    for t in range(1, turns):
        msgs += [{"role": "assistant", "content": f"answer {t} " * 20}, {"role": "user", "content": f"follow-up {t}"}]
    return msgs


def key_of(text: str, **kw) -> BalanceKey:
    return prefix_key(conversation(text, 1), **kw)


def pair(endpoints: list[EndpointView], key: BalanceKey) -> tuple[int, int]:
    """DualMap's two candidates for a key, computed from the public rings (salts 1 and 2)."""
    r1, r2 = HashRing(endpoints, salt=1), HashRing(endpoints, salt=2)
    a = r1.lookup(key.affinity_hash, endpoints)
    return endpoints.index(a), endpoints.index(r2.lookup(key.affinity_hash, endpoints, skip=a))


# --------------------------------------------------------------------------------------------------- prefix_key


def test_turns_of_one_conversation_share_the_root_and_their_common_blocks():
    k1 = prefix_key(conversation("How do I reset my router?", 1))
    k3 = prefix_key(conversation("How do I reset my router?", 3))
    assert k1.affinity_hash == k3.affinity_hash
    assert k3.prefix_blocks[: len(k1.prefix_blocks)] == k1.prefix_blocks
    assert len(k3.prefix_blocks) > len(k1.prefix_blocks)
    assert k1.anchor_blocks == k3.anchor_blocks == len(k1.prefix_blocks)


def test_blocks_are_cumulative_and_message_aligned():
    a = prefix_key(conversation("first question", 1), block_chars=256)
    b = prefix_key(conversation("another question", 1), block_chars=256)
    system_blocks = -(-len("\x1esystem\x1f" + SYSTEM) // 256)  # role, separators and text, in whole blocks
    shared = sum(x == y for x, y in zip(a.prefix_blocks, b.prefix_blocks))
    assert shared == system_blocks  # a longer common prefix matches exactly its blocks, no more
    assert a.prefix_blocks[system_blocks] != b.prefix_blocks[system_blocks]
    assert a.affinity_hash != b.affinity_hash


def test_different_system_prompts_spread_over_the_ring():
    eps = views(8)
    ring = HashRing(eps, salt=1)
    owners = Counter(
        ring.lookup(prefix_key(conversation("hello", 1, system=f"Persona {i}. " * 40)).affinity_hash, eps).name
        for i in range(200)
    )
    assert len(owners) == 8 and max(owners.values()) < 200 * 0.25


def test_prefix_key_is_the_same_in_every_process():
    msgs = conversation("stable across gateways?", 2)
    script = (
        "import json,sys; from turnout.gateway.balance import prefix_key; "
        "print(json.dumps(list(prefix_key(json.loads(sys.argv[1])).prefix_blocks)))"
    )
    out = subprocess.run(
        [sys.executable, "-c", script, json.dumps(msgs)],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONHASHSEED": "12345"},
    )
    assert tuple(json.loads(out.stdout)) == prefix_key(msgs).prefix_blocks


def test_prefix_key_fields_and_content_forms():
    k = prefix_key([{"role": "user", "content": "x" * 400}], session_id="abc")
    assert k.session_id == "abc" and 100 <= k.prompt_tokens <= 105
    parts = prefix_key([{"role": "user", "content": [{"type": "text", "text": "hi "}, {"type": "text", "text": "there"}]}])
    assert parts == prefix_key([{"role": "user", "content": "hi there"}])
    assert prefix_key([{"role": "user", "content": "hi"}]) != prefix_key([{"role": "assistant", "content": "hi"}])
    empty = prefix_key([])
    assert empty.prefix_blocks == () and empty.affinity_hash is None
    with pytest.raises(ConfigError, match="block_chars"):
        prefix_key([], block_chars=0)


def test_an_anchor_past_the_blocks_uses_the_last_one():
    assert BalanceKey((1, 2, 3), 10).affinity_hash == 3
    assert BalanceKey((1, 2, 3), 10, anchor_blocks=2).affinity_hash == 2
    assert BalanceKey((1, 2, 3), 10, anchor_blocks=9).affinity_hash == 3


# --------------------------------------------------------------------------------------------------- every strategy


@pytest.mark.parametrize("name", balancer_names())
def test_every_strategy_returns_only_healthy_endpoints(name):
    eps = views(6)
    for i in (1, 3, 4):
        eps[i].healthy = False
    b = create_balancer(name)
    b.on_change(eps)
    seen = Counter(b.choose(eps, key_of(f"q{i}", session_id=f"s{i % 5}")).name for i in range(300))
    assert set(seen) <= {"ep-0", "ep-2", "ep-5"}
    assert b.name == name


@pytest.mark.parametrize("name", balancer_names())
def test_with_nothing_healthy_the_least_loaded_comes_back_marked_unhealthy(name):
    eps = views(3, healthy=False)
    eps[0].in_flight, eps[1].in_flight, eps[2].in_flight = 5, 1, 3
    chosen = create_balancer(name).choose(eps, key_of("anything"))
    assert chosen is eps[1] and not chosen.healthy


@pytest.mark.parametrize("name", balancer_names())
def test_an_empty_endpoint_list_is_a_routing_error(name):
    with pytest.raises(RoutingError, match="no endpoints"):
        create_balancer(name).choose([], key_of("x"))


def test_round_robin_cycles_skips_the_unhealthy_and_follows_weights():
    eps = views(3)
    b = create_balancer("round_robin")
    assert [b.choose(eps, key_of("x")).name for _ in range(6)] == ["ep-0", "ep-1", "ep-2"] * 2
    eps[1].healthy = False
    assert [b.choose(eps, key_of("x")).name for _ in range(4)] == ["ep-0", "ep-2"] * 2
    w = views(3)
    w[0].weight = 2.0
    rr = create_balancer("round_robin")
    got = [rr.choose(w, key_of("x")).name for _ in range(8)]
    assert Counter(got) == {"ep-0": 4, "ep-1": 2, "ep-2": 2}
    assert got[0] == "ep-0" and got[1] != "ep-0"  # smooth: the heavy one is interleaved, not bunched


def test_least_loaded_picks_the_minimum_per_weight_and_rotates_ties():
    eps = views(3)
    eps[0].in_flight, eps[1].in_flight, eps[2].in_flight = 3, 1, 2
    b = create_balancer("least_loaded")
    assert b.choose(eps, key_of("x")) is eps[1]
    eps[0].in_flight, eps[0].weight = 4, 4.0  # 4 in flight per weight 4 = 1.0, below the others' 2/1
    eps[1].in_flight = 2
    assert b.choose(eps, key_of("x")) is eps[0]
    idle = views(3)
    assert {b.choose(idle, key_of("x")).name for _ in range(3)} == {"ep-0", "ep-1", "ep-2"}


def test_p2c_picks_the_less_loaded_of_two():
    eps = views(3)
    eps[0].in_flight, eps[1].in_flight, eps[2].in_flight = 0, 5, 9
    b = create_balancer("p2c", seed=7)
    got = Counter(b.choose(eps, key_of("x")).name for _ in range(3000))
    assert "ep-2" not in got  # the most loaded loses every pair it is drawn in
    assert 0.6 < got["ep-0"] / 3000 < 0.73  # ep-0 is in 2 of the 3 pairs
    two = views(2)
    two[0].in_flight = 4
    assert all(create_balancer("p2c", seed=s).choose(two, key_of("x")) is two[1] for s in range(20))


def test_consistent_hash_is_stable_for_a_key_whatever_the_load_and_hands_over_while_unhealthy():
    eps = views(5)
    b = create_balancer("consistent_hash")
    k = key_of("same conversation")
    first = b.choose(eps, k)
    first.in_flight = 100
    assert all(b.choose(eps, k) is first for _ in range(10))
    first.healthy = False
    other = b.choose(eps, k)
    assert other is not first and other.healthy
    first.healthy = True
    assert b.choose(eps, k) is first
    spread = Counter(b.choose(eps, key_of(f"conversation {i}")).name for i in range(300))
    assert len(spread) == 5


def test_consistent_hash_notices_a_changed_list_without_on_change():
    eps = views(4)
    b = create_balancer("consistent_hash")
    k = key_of("q")
    owner = b.choose(eps, k)
    rest = [e for e in eps if e is not owner]
    assert b.choose(rest, k) in rest


# --------------------------------------------------------------------------------------------------- hash rings


@pytest.mark.parametrize("n", [4, 8, 16])
def test_adding_an_endpoint_moves_about_one_in_n_plus_one_keys_all_to_the_newcomer(n):
    import random

    rng = random.Random(n)
    hashes = [rng.getrandbits(64) for _ in range(20000)]
    before = views(n)
    after = [*before, EndpointView(f"ep-{n}")]
    r0, r1 = HashRing(before, salt=1), HashRing(after, salt=1)
    moved = [(r0.lookup(h, before).name, r1.lookup(h, after).name) for h in hashes]
    changed = [(a, b) for a, b in moved if a != b]
    assert all(b == f"ep-{n}" for _, b in changed)  # nothing moves between old endpoints
    assert 0.6 / (n + 1) < len(changed) / len(hashes) < 1.5 / (n + 1)


def test_removing_an_endpoint_moves_only_its_own_keys():
    import random

    rng = random.Random(0)
    hashes = [rng.getrandbits(64) for _ in range(20000)]
    full = views(8)
    less = [e for e in full if e.name != "ep-3"]
    r0, r1 = HashRing(full, salt=2), HashRing(less, salt=2)
    owners = [(r0.lookup(h, full).name, r1.lookup(h, less).name) for h in hashes]
    assert all(a == b for a, b in owners if a != "ep-3")
    share = sum(a == "ep-3" for a, _ in owners) / len(hashes)
    assert 0.6 / 8 < share < 1.5 / 8


def test_a_ring_looks_up_in_a_subset_as_if_the_absent_were_unhealthy():
    import random

    rng = random.Random(1)
    full = views(6)
    ring = HashRing(full, salt=1)
    pool = [full[0], full[2], full[5]]  # what ModelTarget.pick passes: the healthy, untried endpoints
    marked = views(6)
    for i in (1, 3, 4):
        marked[i].healthy = False
    for h in (rng.getrandbits(64) for _ in range(2000)):
        assert ring.lookup(h, pool).name == ring.lookup(h, marked).name
    assert ring.lookup(123, []) is None


def test_the_two_rings_are_independent():
    eps = views(8)
    keys = [key_of(f"c{i}") for i in range(400)]
    r1, r2 = HashRing(eps, salt=1), HashRing(eps, salt=2)
    same = sum(r1.lookup(k.affinity_hash, eps) is r2.lookup(k.affinity_hash, eps) for k in keys)
    assert same < 400 * 0.25  # independent rings agree ~1/8 of the time


# --------------------------------------------------------------------------------------------------- dualmap


def test_dualmap_picks_the_less_loaded_of_its_two_candidates():
    eps = views(8, ewma_service_s=0.1)
    k = key_of("new conversation")
    a, b = pair(eps, k)
    assert a != b
    eps[a].in_flight, eps[b].in_flight = 3, 1
    dm = create_balancer("dualmap", slo_s=10.0)
    assert dm.choose(eps, k) is eps[b]  # not one of the idle non-candidates either
    dm2 = create_balancer("dualmap", slo_s=10.0)
    eps[a].in_flight, eps[b].in_flight = 0, 2
    assert dm2.choose(eps, k) is eps[a]


def test_dualmap_keeps_a_conversation_where_its_prefix_went_while_within_the_slo():
    eps = views(8, ewma_service_s=0.1)
    dm = DualMap(slo_s=5.0)
    first = prefix_key(conversation("Explain my bill", 1))
    a, b = pair(eps, first)
    eps[a].in_flight = 1
    went = dm.choose(eps, first)
    assert went is eps[b]
    went.in_flight = 3  # now the more loaded candidate, but it holds the conversation
    later = prefix_key(conversation("Explain my bill", 3))
    assert dm.cached_blocks(eps[b], later) == len(first.prefix_blocks) and dm.cached_blocks(eps[a], later) == 0
    assert dm.choose(eps, later) is eps[b] and dm.last_reason == "affinity"


def test_dualmap_turns_to_the_other_candidate_then_to_pure_load_balancing_when_the_slo_breaks():
    eps = views(8, ewma_service_s=2.0, ewma_prefill_tok_s=10000.0)
    k = key_of("busy")
    a, b = pair(eps, k)
    dm = DualMap(slo_s=3.0)
    eps[a].in_flight = 5  # estimated wait 10 s > 3 s
    assert dm.choose(eps, k) is eps[b]
    eps[b].in_flight = 5  # b now holds the prefix, but both candidates break the SLO
    chosen = dm.choose(eps, k)
    assert chosen not in (eps[a], eps[b]) and chosen.in_flight == 0 and dm.last_reason == "fallback"
    eps[b].in_flight = 5
    eps[a].in_flight = 0
    assert dm.choose(eps, k) is eps[a] and dm.last_reason == "other"  # b is affine and over, a is within


def test_dualmap_sticks_to_a_session_id_until_its_endpoint_breaks_the_slo():
    eps = views(8, ewma_service_s=1.0, ewma_prefill_tok_s=10000.0)
    dm = DualMap(slo_s=2.5)
    home = dm.choose(eps, key_of("start", session_id="s-1"))
    # a prompt with another root (e.g. a client that rewrote the history) whose candidates exclude `home`
    other = next(
        k for k in (key_of(f"rewritten {i}", session_id="s-1") for i in range(200)) if eps.index(home) not in pair(eps, k)
    )
    assert dm.choose(eps, other) is home and dm.last_reason == "session"
    home.in_flight = 3  # estimated wait 3 s > 2.5 s
    moved = dm.choose(eps, other)
    assert moved is not home
    anonymous = BalanceKey(other.prefix_blocks, other.prompt_tokens, None, other.anchor_blocks)
    home.in_flight = 0
    assert DualMap(slo_s=2.5).choose(eps, anonymous) is not home


def test_dualmap_forgets_the_least_recently_sent_prefixes_deepest_first():
    eps = views(2)
    dm = DualMap(index_blocks=4)
    k = prefix_key(conversation("x", 3), block_chars=64)
    target = dm.choose(eps, k)
    assert dm.cached_blocks(target, k) == 4  # the root blocks survive; the deep ones were dropped


def test_consistent_hash_over_a_filtered_pool_moves_only_the_missing_endpoints_keys():
    eps = views(4)
    b = create_balancer("consistent_hash")
    b.on_change(eps)
    keys = [key_of(f"k{i}") for i in range(200)]
    home = [b.choose(eps, k).name for k in keys]
    pool = [e for e in eps if e.name != "ep-0"]  # ep-0 already failed this request (ModelTarget.pick's exclude)
    during = [b.choose(pool, k).name for k in keys]
    assert all(d == h for d, h in zip(during, home) if h != "ep-0") and "ep-0" not in during
    assert [b.choose(eps, k).name for k in keys] == home  # the full list again: every key back home


def test_dualmap_forgets_nothing_when_one_call_sees_a_subset():
    eps = views(4)
    dm = DualMap()
    dm.on_change(eps)
    k = key_of("remember me")
    target = dm.choose(eps, k)
    got = dm.choose([e for e in eps if e is not target], k)
    assert got is not target
    assert dm.cached_blocks(target, k) == len(k.prefix_blocks)
    assert dm.choose(eps, k) in (target, got)  # both now hold the prefix; either is affine


def test_an_endpoint_never_announced_joins_the_rings():
    eps = views(3)
    b = create_balancer("consistent_hash")
    b.on_change(eps)
    grown = [*eps, EndpointView("ep-new")]
    assert "ep-new" in {b.choose(grown, key_of(f"q{i}")).name for i in range(300)}


def test_dualmap_forgets_departed_endpoints_and_their_sessions():
    eps = views(3)
    dm = DualMap()
    home = dm.choose(eps, key_of("a", session_id="s"))
    rest = [e for e in eps if e is not home]
    dm.on_change(rest)
    assert dm.choose(rest, key_of("a", session_id="s")) in rest


def test_estimate_ttft_counts_the_requests_ahead_and_the_uncached_prefill():
    e = EndpointView("x", in_flight=3, ewma_service_s=2.0, ewma_prefill_tok_s=50.0)
    assert estimate_ttft(e, 100, prefill_tok_s=1.0, service_s=9.0) == pytest.approx(3 * 2.0 + 2.0)
    batch = EndpointView("y", in_flight=3, slots=4, ewma_service_s=2.0)
    assert estimate_ttft(batch, 260, prefill_tok_s=260.0, service_s=9.0) == pytest.approx(1.0)  # a free slot
    fresh = EndpointView("z", in_flight=1)
    assert estimate_ttft(fresh, 0, prefill_tok_s=260.0, service_s=1.5) == pytest.approx(1.5)


# --------------------------------------------------------------------------------------------------- registry


def test_create_balancer_names_the_fix():
    assert create_balancer().name == "least_loaded"
    assert set(balancer_names()) == {"least_loaded", "round_robin", "p2c", "consistent_hash", "dualmap", "random"}
    with pytest.raises(ConfigError, match="use one of: least_loaded"):
        create_balancer("dual_map")
    with pytest.raises(ConfigError, match="its parameters are: slo_s"):
        create_balancer("dualmap", slo=2.0)
    with pytest.raises(ConfigError, match="takes no parameters"):
        create_balancer("round_robin", seed=1)
    with pytest.raises(ConfigError, match="dualmap needs slo_s"):
        create_balancer("dualmap", slo_s=0)
    with pytest.raises(ConfigError, match="give numbers to: slo_s"):
        create_balancer("dualmap", slo_s="fast")


# --------------------------------------------------------------------------------------------------- simulator


@pytest.fixture(scope="module")
def sim():
    return _load("_affinity_sim")


def test_simulator_dualmap_hits_the_prefix_cache_more_than_least_loaded(sim):
    costs = sim.load_costs(None)
    trace = sim.build_trace(sim.TraceSpec(sessions=200), seed=3, costs=costs)
    cfg = sim.SimConfig(replicas=4, cache_tokens=8192)
    rate = 0.6 * cfg.replicas / trace.mean_cold_service_s(costs)
    ll = sim.simulate(trace, rate, create_balancer("least_loaded"), cfg, costs)
    dm = sim.simulate(trace, rate, create_balancer("dualmap", slo_s=30.0), cfg, costs)
    again = sim.simulate(trace, rate, create_balancer("dualmap", slo_s=30.0), cfg, costs)
    assert dm.hit_rate > ll.hit_rate + 0.1
    assert dm.ttft_mean_s < ll.ttft_mean_s
    assert again.as_dict() == dm.as_dict()  # seeded and deterministic
    assert dm.requests == ll.requests > 0


def test_simulator_cache_serves_the_second_turn_from_the_first(sim):
    costs = sim.Costs(prefill_tok_s=100.0, decode_tok_s=50.0)
    spec = sim.TraceSpec(sessions=1, chat_frac=1.0, mean_turns=2.0, max_turns=2, session_id_frac=0.0)
    trace = sim.build_trace(spec, seed=0, costs=costs)
    first, second = trace.requests
    assert second.prompt_blocks[: len(first.prompt_blocks)] == first.prompt_blocks
    assert second.prompt_blocks[: len(first.seq_blocks)] == first.seq_blocks  # the answer is part of turn two
    st = sim.simulate(trace, 1.0, create_balancer("least_loaded"), sim.SimConfig(replicas=1, warmup_frac=0.0), costs)
    cached = len(first.seq_blocks) * trace.block_tokens
    assert st.hit_rate == pytest.approx(cached / (first.prompt_tokens + second.prompt_tokens))
    # turn two arrives after turn one's answer: each TTFT is its uncached prefill, no queue
    assert st.ttft_mean_s == pytest.approx((first.prompt_tokens + second.prompt_tokens - cached) / 100.0 / 2)


def test_find_capacity_bisects_between_the_last_pass_and_the_first_failure(sim):
    def run(rate):
        return sim.RunStats(rate, 1, 0.0, rate, rate, rate * 10, 1.0)  # p99 = 10 x rate

    cap, runs = sim.find_capacity(run, [0.1, 0.2, 0.4, 0.8, 1.6], slo_s=5.0, bisect_steps=12)
    assert cap == pytest.approx(0.5, rel=0.01) and cap <= 0.5
    assert len(runs) == 4 + 12  # the sweep stops at its first failure (0.8), then bisects
    assert sim.find_capacity(run, [1.0, 2.0], slo_s=5.0)[0] == 0.0


def test_load_costs_reads_the_calibration_and_falls_back(sim, tmp_path):
    assert sim.load_costs(tmp_path / "absent.json").prefill_tok_s == 260.0
    p = tmp_path / "c.json"
    p.write_text(json.dumps({"prefill_tok_s": 120.0, "decode_tok_s": 40.0, "prefill_overhead_s": 0.05, "model": "m"}))
    c = sim.load_costs(p)
    assert (c.prefill_tok_s, c.decode_tok_s, c.prefill_overhead_s) == (120.0, 40.0, 0.05) and "measured" in c.source


def test_calibration_fit_recovers_a_line():
    costs = _load("llamacpp_costs")
    overhead, tok_s = costs.fit_prefill([(n, 0.2 + n / 250.0) for n in (50, 200, 800, 1600)])
    assert overhead == pytest.approx(0.2) and tok_s == pytest.approx(250.0)
    slow = [(n, 0.2 + n / 250.0) for n in (50, 200, 800)] + [(200, 9.0), (800, 30.0)]  # stalls: other processes
    assert costs.fit_prefill(slow)[1] == pytest.approx(250.0)
    with pytest.raises(RuntimeError, match="does not grow"):
        costs.fit_prefill([(100, 2.0), (1000, 1.0)])


def test_bench_writes_the_promised_json(tmp_path):
    bench = _load("cache_affinity")
    out, png = tmp_path / "ca.json", tmp_path / "ca.png"
    assert (
        bench.main(
            [
                "--sessions",
                "60",
                "--replicas",
                "4",
                "--bisect-steps",
                "1",
                "--choose-calls",
                "300",
                "--calibration",
                str(tmp_path / "none.json"),
                "--json",
                str(out),
                "--plot",
                str(png),
            ]
        )
        == 0
    )
    doc = json.loads(out.read_text())
    for name in ("round_robin", "least_loaded", "consistent_hash", "dualmap"):
        entry = doc["strategies"][name]
        assert {"capacity_rps", "hit_rate", "ttft_mean_s", "ttft_p99_s", "imbalance"} <= set(entry)
        assert 0.0 <= entry["hit_rate"] <= 1.0 and entry["imbalance"] >= 1.0
    assert doc["costs"]["source"].startswith("fallback")
    assert png.stat().st_size > 10_000
