"""Opening a call's bids (services.tendering.handlers.open_bids) with real keys: every bid opened
or set aside with its order kept, and the event loop free to serve other calls meanwhile."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from decimal import Decimal

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from services.tendering import model, sealing
from services.tendering.handlers import open_bids

CALL = "regions/pirkanmaa/calls/c1"
RECEIVED = datetime(2026, 12, 7, 9, tzinfo=UTC)


def _sealed_bids(count: int, opening_public: bytes, tampered: set[int]) -> list[model.SealedBid]:
    signer = Ed25519PrivateKey.generate()
    bids = []
    for index in range(count):
        lot, bidder = str(1 + index % 2), f"{1_000_000 + index:07d}-0"
        content = model.BidContent(Decimal(1000 + index), {"plan": 3}, {"no-tax-debt": True})
        sealed = sealing.seal_bid(content.encode(), opening_public, CALL, lot, bidder)
        signature = signer.sign(sealed)
        if index in tampered:
            sealed = sealed[:-1] + bytes([sealed[-1] ^ 1])
        bids.append(
            model.SealedBid(
                f"bid-{index}", lot, bidder, sealing.raw_public(signer), sealed, signature, RECEIVED
            )
        )
    return bids


async def test_every_bid_is_opened_in_order_and_a_tampered_one_is_kept_unopened() -> None:
    private = X25519PrivateKey.generate()
    bids = _sealed_bids(300, sealing.raw_public(private), tampered={7, 250})

    candidates, openings = await open_bids(CALL, bids, private)

    assert [c.bid for c in candidates] == [b.id for b in bids] == [o.bid for o in openings]
    unopened = [index for index, c in enumerate(candidates) if c.content is None]
    assert unopened == [7, 250]
    assert [openings[i].content_json for i in unopened] == [None, None]
    assert candidates[299].content is not None and candidates[299].content.price == Decimal(1299)


async def test_no_bids_open_to_nothing() -> None:
    assert await open_bids(CALL, [], X25519PrivateKey.generate()) == ([], [])


async def test_the_event_loop_keeps_running_while_thousands_of_bids_are_opened() -> None:
    private = X25519PrivateKey.generate()
    bids = _sealed_bids(2000, sealing.raw_public(private), tampered=set())
    ticks = 0
    opening_done = asyncio.Event()

    async def ticker() -> None:
        nonlocal ticks
        while not opening_done.is_set():
            await asyncio.sleep(0.001)
            ticks += 1

    ticking = asyncio.create_task(ticker())
    await asyncio.sleep(0)  # the ticker is waiting on its first sleep
    ticks = 0
    try:
        candidates, _ = await open_bids(CALL, bids, private)
    finally:
        opening_done.set()
        await ticking

    assert all(c.content is not None for c in candidates)
    # An opening run on the loop itself lets the ticker run at most once, after it ends.
    assert ticks >= 5
