"""docs/examples/dpop_client.py, run as a process against a gateway that requires proofs
(``binding.mode: proof``): it gets a key-bound token, talks and renews with proofs."""

import asyncio
import sys
from pathlib import Path
from typing import Any

from tests.support.harness import Gateway

EXAMPLE = Path(__file__).parents[2] / "docs" / "examples" / "dpop_client.py"


async def test_the_python_dpop_client_example_talks_and_renews(gateway_factory: Any) -> None:
    gateway: Gateway = await gateway_factory(policies="binding: {mode: proof}\n")
    key = await gateway.create_key()
    process = await asyncio.create_subprocess_exec(
        sys.executable, str(EXAMPLE), "--gateway", gateway.url, "--key", key,
        "first words", "second words",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, err.decode()
    lines = out.decode().splitlines()
    assert len(lines) == 2 and "first words" in lines[0] and "second words" in lines[1]
    assert gateway.sample("gateway_token_renewals_total", outcome="renewed") == 1
    assert gateway.sample("gateway_tokens_issued_total", model="demo") == 1
    refused = gateway.metrics.registry.get_sample_value
    assert all(
        (refused("gateway_dpop_proofs_refused_total", {"reason": r}) or 0) == 0
        for r in ("missing", "signature", "url", "time", "token_hash", "replayed")
    )


async def test_the_example_with_a_wrong_clock_retries_with_the_gateway_s_nonce(
    gateway_factory: Any,
) -> None:
    gateway: Gateway = await gateway_factory(policies="binding: {mode: proof}\n")
    key = await gateway.create_key()
    process = await asyncio.create_subprocess_exec(
        sys.executable, str(EXAMPLE), "--gateway", gateway.url, "--key", key,
        "--clock-offset", "-900", "first words", "second words",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, err.decode()
    assert len(out.decode().splitlines()) == 2
    # its first call was refused for its time; the nonce it got, renewed by each answer,
    # carried the other three (send, renewal, send)
    assert gateway.sample("gateway_dpop_proofs_refused_total", reason="time") == 1
    assert gateway.sample("gateway_dpop_proofs_refused_total", reason="nonce") == 0
    assert gateway.sample("gateway_token_renewals_total", outcome="renewed") == 1
