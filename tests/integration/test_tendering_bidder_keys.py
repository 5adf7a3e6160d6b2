# ruff: noqa: F811 - the tendering fixture is test_tendering's
"""Bidder keys over gRPC against real SQLite and PostgreSQL: a provider enrols, lists (paged) and
retires its own keys, each change an event and an audit record; a key is one bidder's for good;
a bid verifies only with a key live-enrolled for its bidder, and nothing of a refused bid is
stored; a bid submitted before its key was retired still opens."""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta
from typing import Any

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from kasvu.tendering.v1 import events_pb2, tendering_pb2
from sqlalchemy import text

from services.tendering import sealing
from tests.integration.helpers import business_ids, count_rows, error_reason, field_violations
from tests.integration.test_tendering import (  # noqa: F401 - the fixture
    DEADLINE,
    Member,
    Provider,
    World,
    content,
    published,
    share_of,
    world,
)

NOTHING_STORED = ("tendering_bids", "outbox", "idempotency_keys", "audit_log")


async def counts(world: World) -> dict[str, int]:
    return {table: await count_rows(world.db, table) for table in NOTHING_STORED}


async def outbox(world: World, event: str) -> list[tuple[str, bytes]]:
    async with world.db.reader.connect() as connection:
        rows = await connection.execute(
            text("SELECT subject, payload FROM outbox WHERE event_type = :t ORDER BY seq"),
            {"t": f"kasvu.tendering.v1.{event}"},
        )
        return [(str(subject), bytes(payload)) for subject, payload in rows.all()]


async def audited(world: World, command: str) -> list[list[str]]:
    """The resources of each audit record of `command`, oldest first."""
    async with world.db.reader.connect() as connection:
        rows = await connection.execute(
            text("SELECT resources FROM audit_log WHERE command = :c ORDER BY seq"), {"c": command}
        )
        return [json.loads(resources) for (resources,) in rows.all()]


async def listed(world: World, provider: Provider, page_size: int) -> list[list[tendering_pb2.BidderKey]]:
    """Every page of the provider's keys."""
    pages, token = [], ""
    while True:
        page = await world.stub.ListBidderKeys(
            tendering_pb2.ListBidderKeysRequest(
                parent=f"bidders/{provider.business_id}", page_size=page_size, page_token=token
            ),
            metadata=world.provider(provider.business_id),
        )
        pages.append(list(page.bidder_keys))
        token = page.next_page_token
        if not token:
            return pages


async def retire(world: World, provider: Provider, name: str, **kwargs: Any) -> tendering_pb2.BidderKey:
    return await world.stub.RetireBidderKey(
        tendering_pb2.RetireBidderKeyRequest(name=name, **kwargs),
        metadata=world.provider(provider.business_id),
    )


async def refusal(awaitable: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await awaitable
    return error.value


async def test_a_provider_enrols_lists_paged_and_retires_its_keys_each_change_an_event_and_audited(
    world: World,
) -> None:
    provider = Provider(business_ids()())
    keys = [Ed25519PrivateKey.generate() for _ in range(3)]
    enrolled = []
    for index, key in enumerate(keys):
        if index:
            world.clock.advance(timedelta(minutes=1))
        enrolled.append(await world.enrol(provider, key))
    fingerprints = [sealing.key_fingerprint(sealing.raw_public(k)) for k in keys]
    assert [k.name for k in enrolled] == [f"bidders/{provider.business_id}/keys/{f}" for f in fingerprints]
    assert all(k.state == tendering_pb2.BIDDER_KEY_STATE_LIVE and not k.proof for k in enrolled)

    # The same key again: the one enrolled, no new event, no audit record.
    before = await counts(world)
    again = await world.enrol(provider, keys[0])
    assert again == enrolled[0]
    assert await counts(world) == before

    retired = await retire(world, provider, enrolled[1].name, request_id="retire-1")
    assert retired.state == tendering_pb2.BIDDER_KEY_STATE_RETIRED
    assert retired.retire_time.ToDatetime() == world.clock.now().replace(tzinfo=None)
    # Retiring it again (another request) finds the state it asks for and changes nothing.
    before = await counts(world)
    assert await retire(world, provider, enrolled[1].name) == retired
    assert await counts(world) == before

    # Newest enrolment first; two pages of two and one, no repeats, no gaps.
    pages = await listed(world, provider, page_size=2)
    assert [len(p) for p in pages] == [2, 1]
    assert [k.name for p in pages for k in p] == [enrolled[2].name, retired.name, enrolled[0].name]
    assert [k.state for p in pages for k in p] == [
        tendering_pb2.BIDDER_KEY_STATE_LIVE,
        tendering_pb2.BIDDER_KEY_STATE_RETIRED,
        tendering_pb2.BIDDER_KEY_STATE_LIVE,
    ]
    # Another provider lists nothing of these, and may neither list nor retire them.
    other = Provider(business_ids(2_345_670)())
    assert await listed(world, other, page_size=2) == [[]]
    foreign_list = await refusal(
        world.stub.ListBidderKeys(
            tendering_pb2.ListBidderKeysRequest(parent=f"bidders/{provider.business_id}"),
            metadata=world.provider(other.business_id),
        )
    )
    assert foreign_list.code() == grpc.StatusCode.PERMISSION_DENIED
    foreign_retire = await refusal(retire(world, other, enrolled[0].name))
    assert foreign_retire.code() == grpc.StatusCode.PERMISSION_DENIED
    # Named under its own business ID, another's key does not exist for it.
    other_name = f"bidders/{other.business_id}/keys/{fingerprints[0]}"
    assert (await refusal(retire(world, other, other_name))).code() == grpc.StatusCode.NOT_FOUND
    foreign_enrol = await refusal(
        world.stub.EnrolBidderKey(
            tendering_pb2.EnrolBidderKeyRequest(
                parent=f"bidders/{provider.business_id}",
                bidder_key=tendering_pb2.BidderKey(
                    public_key=other.public_key,
                    proof=sealing.sign_bidder_key(provider.business_id, other.key),
                ),
            ),
            metadata=world.provider(other.business_id),
        )
    )
    assert foreign_enrol.code() == grpc.StatusCode.PERMISSION_DENIED

    enrolments = [
        events_pb2.BidderKeyEnrolled.FromString(p) for _, p in await outbox(world, "BidderKeyEnrolled")
    ]
    assert [(e.key, e.bidder, e.fingerprint) for e in enrolments] == [
        (k.name, provider.business_id, f) for k, f in zip(enrolled, fingerprints, strict=True)
    ]
    [(subject, payload)] = await outbox(world, "BidderKeyRetired")
    assert subject == f"kasvu.tendering.v1.BidderKeyRetired.{provider.business_id}"
    retirement = events_pb2.BidderKeyRetired.FromString(payload)
    assert (retirement.key, retirement.fingerprint) == (retired.name, fingerprints[1])
    assert retirement.retire_time == retired.retire_time
    # Identifiers, fingerprints and times only: not even the public key itself.
    payloads = [p for _, p in await outbox(world, "BidderKeyEnrolled")]
    assert all(sealing.raw_public(k) not in p for k in keys for p in payloads)
    assert await audited(world, "EnrolBidderKey") == [[k.name] for k in enrolled]
    assert await audited(world, "RetireBidderKey") == [[retired.name]]


async def test_a_retired_key_is_never_enrolled_again_and_a_key_is_one_bidders_only(world: World) -> None:
    next_id = business_ids()
    provider, other = Provider(next_id()), Provider(next_id())
    key = await world.enrol(provider)
    await retire(world, provider, key.name)
    before = await counts(world)
    again = await refusal(world.enrol(provider))
    assert (again.code(), error_reason(again)) == (grpc.StatusCode.FAILED_PRECONDITION, "BIDDER_KEY_RETIRED")
    # Another bidder proving it holds the key (it does: the key leaked, or is shared) still may
    # not make it its own; nor the live key of anyone else.
    taken = await refusal(world.enrol(other, provider.key))
    assert (taken.code(), error_reason(taken)) == (grpc.StatusCode.FAILED_PRECONDITION, "BIDDER_KEY_TAKEN")
    live = Ed25519PrivateKey.generate()
    await world.enrol(provider, live)
    before = await counts(world)
    taken_live = await refusal(world.enrol(other, live))
    assert error_reason(taken_live) == "BIDDER_KEY_TAKEN"
    assert await counts(world) == before


async def test_a_key_enrolment_without_a_valid_key_or_proof_is_refused_naming_the_field(world: World) -> None:
    provider = Provider(business_ids()())
    before = await counts(world)
    short = await refusal(world.enrol(provider, public_key=b"\x01" * 31))
    assert (short.code(), field_violations(short)) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        ["bidder_key.public_key"],
    )
    # A proof made for another bidder, or by another key, proves nothing about this enrolment.
    for proof in (
        sealing.sign_bidder_key(business_ids(2_345_670)(), provider.key),
        sealing.sign_bidder_key(provider.business_id, Ed25519PrivateKey.generate()),
        b"",
    ):
        forged = await refusal(world.enrol(provider, proof=proof))
        assert field_violations(forged) == ["bidder_key.proof"]
    assert await counts(world) == before
    assert await count_rows(world.db, "tendering_bidder_keys") == 0
    misnamed = await refusal(retire(world, provider, f"bidders/{provider.business_id}/keys/{'A' * 64}"))
    assert (misnamed.code(), field_violations(misnamed)) == (grpc.StatusCode.INVALID_ARGUMENT, ["name"])


async def test_a_bid_signed_with_a_key_not_live_enrolled_for_its_bidder_is_refused_and_nothing_stored(
    world: World,
) -> None:
    members = [Member("alice"), Member("bob")]
    next_id = business_ids()
    bidder, other = Provider(next_id()), Provider(next_id())
    await world.enrol(other)
    retiring = Provider(next_id())
    retired = await world.enrol(retiring)
    await retire(world, retiring, retired.name)
    async with published(world, members) as call:
        before = await counts(world)
        cases = {
            "never enrolled": (bidder, bidder.key),
            "another bidder's enrolled key": (bidder, other.key),
            "a retired key": (retiring, retiring.key),
        }
        for case, (provider, signing) in cases.items():
            signed_as = Provider(provider.business_id, signing)
            error = await refusal(world.bid(call, signed_as, "north", content(1000, 1), enrol=False))
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, case
            assert error_reason(error) == "BIDDER_KEY_NOT_ENROLLED", case
            assert field_violations(error) == ["bid.public_key"], case
        # With a request id too: no idempotency record keeps a refused bid.
        error = await refusal(
            world.stub.SubmitBid(
                tendering_pb2.SubmitBidRequest(
                    parent=call.name,
                    bid=tendering_pb2.Bid(
                        lot="north",
                        public_key=other.public_key,
                        sealed_bid=b"x",
                        signature=other.key.sign(b"x"),
                        opening_key_sha256=sealing.key_fingerprint(call.opening_public_key),
                    ),
                    request_id="bid-1",
                ),
                metadata=world.provider(bidder.business_id),
            )
        )
        assert error_reason(error) == "BIDDER_KEY_NOT_ENROLLED"
        assert await counts(world) == before


async def test_a_bid_submitted_before_its_key_was_retired_still_opens_and_a_new_one_is_refused(
    world: World,
) -> None:
    members = [Member("alice"), Member("bob")]
    provider = Provider(business_ids()())
    async with published(world, members) as call:
        bid = await world.bid(call, provider, "north", content(100_000, 4))
        [key] = (await listed(world, provider, page_size=10))[0]
        await retire(world, provider, key.name)
        late = await refusal(world.bid(call, provider, "south", content(90_000, 4)))
        assert error_reason(late) == "BIDDER_KEY_NOT_ENROLLED"
    world.clock.set(DEADLINE + timedelta(minutes=1))
    await world.tick()
    await share_of(world, call, members, 0)
    opened = await share_of(world, call, members, 1)
    assert [(s.bid, s.rank) for s in opened.scores] == [(bid.name, 1)]


# SQLite runs every write through one writer, so a bid and a retirement cannot interleave there.
@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
async def test_a_bid_behind_an_uncommitted_retirement_of_its_key_waits_and_is_refused(world: World) -> None:
    members = [Member("alice"), Member("bob")]
    provider = Provider(business_ids()())
    key = await world.enrol(provider)
    provider.enrolled = True
    fingerprint = key.name.rsplit("/", 1)[1]
    async with published(world, members) as call, world.db.writer.connect() as retiring:
        # A retirement in flight: its row lock is held until it commits.
        transaction = await retiring.begin()
        await retiring.execute(
            text("UPDATE tendering_bidder_keys SET retired_at = now() WHERE fingerprint = :fp"),
            {"fp": fingerprint},
        )
        bidding = asyncio.create_task(world.bid(call, provider, "north", content(100_000, 4)))
        await asyncio.sleep(0.5)
        assert not bidding.done(), "the bid did not wait for the retirement in flight"
        await transaction.commit()
        error = await refusal(bidding)
    assert error_reason(error) == "BIDDER_KEY_NOT_ENROLLED"
    assert await count_rows(world.db, "tendering_bids") == 0
