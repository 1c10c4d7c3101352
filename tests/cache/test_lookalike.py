"""The look-alike guard on crafted pairs: each check refuses what it should, explains why, and lets paraphrases by."""

from __future__ import annotations

import pytest

from turnout.cache import CHECKS, LookalikeGuard
from turnout.cache.lookalike import entities, exclusions, negations, numbers, units

GUARD = LookalikeGuard()


@pytest.mark.parametrize(
    ("cached", "new", "check"),
    [
        ("Can I take 5 mg of melatonin?", "Can I take 50 mg of melatonin?", "numbers"),
        ("Is 38.5 a fever for a baby?", "Is 39.5 a fever for a baby?", "numbers"),
        ("My son is three years old, is that normal?", "My son is four years old, is that normal?", "numbers"),
        ("Is it normal after twenty five years?", "Is it normal after 25 days?", "units"),
        ("Used it for 3 or 4 years, stopped 3 months ago", "Used it for 4 or 4 years, stopped 3 months ago", "numbers"),
        ("Can I take half a tablet?", "Can I take a tablet?", "numbers"),
        ("Is ibuprofen safe in pregnancy?", "Is ibuprofen not safe in pregnancy?", "negation"),
        ("Can I drink alcohol with antibiotics?", "Can I drink alcohol without antibiotics?", "negation"),
        ("Why can I sleep at night?", "Why can't I sleep at night?", "negation"),
        ("Why can I sleep at night?", "Why can\u2019t I sleep at night?", "negation"),
        ("What causes migraines?", "Apart from stress, what causes migraines?", "exclusion"),
        ("Take 5 mg twice a day?", "Take 5 g twice a day?", "units"),
        ("How many hours after a dose can I drive?", "How many days after a dose can I drive?", "units"),
        ("Is azithromycin safe with alcohol?", "Is doxycycline safe with alcohol?", "entities"),
        ("Does HIV cause weight loss?", "Does HPV cause weight loss?", "entities"),
        ("Is my B12 level low?", "Is my D3 level low?", "entities"),
        ("Can I fly to Paris while pregnant?", "Can I fly to Tokyo while pregnant?", "entities"),
    ],
)
def test_each_check_refuses_its_lookalike(cached: str, new: str, check: str) -> None:
    verdict = GUARD.check(cached, new)
    assert not verdict.ok
    assert verdict.check == check
    assert verdict.reason and check.rstrip("s") in verdict.reason
    # the check alone refuses it too, and a guard without it lets the pair through only if nothing else differs
    assert not LookalikeGuard.only(check).check(cached, new).ok


@pytest.mark.parametrize(
    ("cached", "new"),
    [
        ("How long does a cold last?", "How long do colds usually last?"),
        ("What is the capital of France?", "what's the capital of france"),
        ("Is Cervical cancer hereditary?", "Is cervical cancer hereditary?"),
        ("Can I take 5mg of melatonin?", "Is it okay to take 5 mg melatonin?"),
        ("Can I take five mg of melatonin?", "Can I take 5 milligrams of melatonin?"),
        ("I'm 39 years old and weigh 193 lbs. Am I overweight?", "At 39 years of age and 193 pounds, am I overweight?"),
        ("How to treat a knockout rose thorn prick?", "How do I treat a knock out rose thorn prick?"),
    ],
)
def test_paraphrases_pass(cached: str, new: str) -> None:
    verdict = GUARD.check(cached, new)
    assert verdict.ok, verdict.reason
    assert verdict.check is None and verdict.reason is None


def test_features_extracted_once_give_the_same_verdicts() -> None:
    new = "Is 50 mg of melatonin every night safe for adults?"
    cached = [
        "Is 5 mg of melatonin every night safe for adults?",
        "Is 50 mg melatonin safe for adults every night?",
        "Is 50 mg of melatonin never safe for adults?",
        "Is 50 mg of zolpidem every night safe for adults?",
    ]
    features = GUARD.features(new)
    for guard in (GUARD, LookalikeGuard.only("entities"), LookalikeGuard.only()):
        for c in cached:
            assert guard.check(c, features) == guard.check(c, new) == guard.check(guard.features(c), features)


def test_reason_names_the_details() -> None:
    v = GUARD.check("Can I take 5 mg of melatonin?", "Can I take 50 mg of melatonin?")
    assert v.reason == "numbers differ: cached {5} vs new {50}"
    v = GUARD.check("Is azithromycin safe with alcohol?", "Is doxycycline safe with alcohol?")
    assert v.reason == "entities differ: only cached {azithromycin}, only new {doxycycline}"


def test_extractors() -> None:
    assert numbers("Twenty five mg twice a day for 3 weeks, 1/2 tablet, 1,000 IU, two hundred and five") == (
        "0.5",
        "1000",
        "2",
        "205",
        "25",
        "3",
    )
    assert numbers("the other one, at first, no one") == ()  # "one" and "first" alone are not numbers
    assert numbers("2400000 then 2400001") == ("2400000", "2400001")
    assert negations("I don't know, it's not clear and never was") == 3
    assert negations("Nothing helps") == 1 and negations("Is it safe?") == 0
    assert exclusions("Other than rest, and besides ice?") == frozenset({"other than", "besides"})
    assert units("193 lbs, 2000 IU/day for 3 hrs, on day 11, the other day") == ("day", "day", "hour", "iu", "lb")
    assert units("e.g. H1N1 at the end of the day") == ()  # letters of codes and idioms are not quantities
    assert entities("Is it safe to take Azithromycin and ibuprofen with HIV? My B12 is low.") == frozenset(
        {"azithromycin", "ibuprofen", "hiv", "b12"}
    )
    assert entities("What is this? Why does it hurt? I think so.") == frozenset()  # sentence-initial words


def test_only_and_enabled() -> None:
    assert LookalikeGuard().enabled == CHECKS
    assert LookalikeGuard.only("numbers", "units").enabled == ("numbers", "units")
    assert LookalikeGuard.only().check("5 mg", "not 6 g of Tylenol").ok  # no check, nothing refused
    with pytest.raises(ValueError, match="unknown look-alike check"):
        LookalikeGuard.only("numbers", "spelling")
