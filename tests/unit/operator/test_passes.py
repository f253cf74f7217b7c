"""Reconcile passes per namespace, coalesced (issue item 4)."""

from __future__ import annotations

import asyncio

import pytest

from sidecar_operator.handlers.passes import NamespacePasses


def test_a_burst_of_requests_costs_at_most_two_passes_per_namespace() -> None:
    runs: list[str] = []

    async def run(namespace: str, _: bool) -> None:
        runs.append(namespace)
        await asyncio.sleep(0.01)

    async def burst() -> None:
        passes = NamespacePasses(run)
        shop = [passes.request("shop", roll_missed=False) for _ in range(20)]
        cart = [passes.request("cart", roll_missed=False) for _ in range(5)]
        await asyncio.gather(*shop, *cart)
        assert passes.passes == len(runs)

    asyncio.run(burst())
    assert runs.count("shop") <= 2 and runs.count("cart") <= 2


def test_a_request_during_a_pass_gets_a_pass_that_starts_after_it() -> None:
    seen: list[int] = []
    state = {"value": 0}

    async def run(_: str, __: bool) -> None:
        seen.append(state["value"])
        await asyncio.sleep(0.01)

    async def scenario() -> None:
        passes = NamespacePasses(run)
        first = asyncio.create_task(passes.request("shop", roll_missed=False))
        await asyncio.sleep(0.001)  # the first pass is running
        state["value"] = 1  # a change it cannot have seen
        await passes.request("shop", roll_missed=False)
        await first

    asyncio.run(scenario())
    assert seen == [0, 1]


def test_the_error_of_a_pass_reaches_its_requesters() -> None:
    async def run(_: str, __: bool) -> None:
        raise RuntimeError("apiserver gone")

    async def scenario() -> None:
        passes = NamespacePasses(run)
        with pytest.raises(RuntimeError, match="apiserver gone"):
            await passes.request("shop", roll_missed=False)
        with pytest.raises(RuntimeError):
            await passes.request("shop", roll_missed=False)  # the next request runs a pass again

    asyncio.run(scenario())


def test_a_pass_rolls_missed_injections_if_any_request_it_serves_asks() -> None:
    flags: list[bool] = []

    async def run(_: str, roll_missed: bool) -> None:
        flags.append(roll_missed)
        await asyncio.sleep(0.01)

    async def scenario() -> None:
        passes = NamespacePasses(run)
        first = asyncio.create_task(passes.request("shop", roll_missed=False))
        await asyncio.sleep(0.001)
        await asyncio.gather(passes.request("shop", roll_missed=False),
                             passes.request("shop", roll_missed=True))  # fmt: skip
        await first
        await passes.request("shop", roll_missed=False)

    asyncio.run(scenario())
    assert flags == [False, True, False]
