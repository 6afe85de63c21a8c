"""The dashboard compares, per policy, what shadow policies would refuse with what
enforced policies refuse, using the outcomes the gateway really counts."""

from __future__ import annotations

import re
from typing import get_args

from gateway.observability.metrics import RateLimitOutcome
from tests.deploy.test_monitoring import dashboard


def test_a_panel_compares_shadow_and_enforced_refusals_per_policy() -> None:
    panels = [
        p for p in dashboard()["panels"] if p["title"] == "Shadow vs enforced refusals per policy"
    ]
    assert len(panels) == 1
    outcomes: dict[str, str] = {}
    for target in panels[0]["targets"]:
        expr = target["expr"]
        assert expr.startswith("sum by (policy) (rate(gateway_ratelimit_decisions_total{"), expr
        outcome = re.search(r'outcome="(\w+)"', expr)
        assert outcome is not None, expr
        outcomes[outcome.group(1)] = target["legendFormat"]
    assert set(outcomes) == {"shadow_limited", "limited"}
    assert set(outcomes) <= set(get_args(RateLimitOutcome))
    assert all("{{policy}}" in legend for legend in outcomes.values())
    # the shadow series is drawn dashed: the override's pattern names its legend
    (override,) = panels[0]["fieldConfig"]["overrides"]
    assert re.fullmatch(override["matcher"]["options"], "send-per-ip would refuse (shadow)")
    assert not re.fullmatch(override["matcher"]["options"], "send-per-ip refused (enforced)")
    assert outcomes["shadow_limited"] == "{{policy}} would refuse (shadow)"
