from gateway.core.miss_budget import MissBudget


def test_a_burst_then_the_rate() -> None:
    budget = MissBudget(2, burst=3)
    now = 100.0
    assert [budget.allow(f"id{i}", now) for i in range(4)] == ["allowed"] * 3 + ["over_budget"]
    assert budget.allow("id9", now + 0.49) == "over_budget"
    assert budget.allow("id9", now + 0.5) == "allowed"  # one more every 1/rate seconds
    assert budget.allow("id10", now + 0.5) == "over_budget"


def test_an_id_found_missing_is_not_looked_up_again_for_a_while() -> None:
    budget = MissBudget(1000, forget_seconds=60)
    assert budget.allow("ghost", 0.0) == "allowed"
    budget.missing("ghost", 0.0)
    assert budget.allow("ghost", 59.9) == "known_missing"
    assert budget.allow("other", 59.9) == "allowed"
    assert budget.allow("ghost", 60.0) == "allowed"  # forgotten: may exist by now


def test_known_missing_ids_are_bounded() -> None:
    budget = MissBudget(1000, max_ids=3)
    for i in range(5):
        budget.missing(f"id{i}", 0.0)
    assert budget.allow("id0", 1.0) == "allowed"  # the oldest were dropped
    assert budget.allow("id4", 1.0) == "known_missing"


def test_known_missing_ids_do_not_spend_the_budget() -> None:
    budget = MissBudget(1, burst=1)
    budget.missing("ghost", 0.0)
    assert all(budget.allow("ghost", 0.0) == "known_missing" for _ in range(10))
    assert budget.allow("new", 0.0) == "allowed"


def test_a_rate_of_zero_never_looks_up() -> None:
    assert MissBudget(0).allow("any", 0.0) == "disabled"
