"""Tendering's figures: opening 10 000 sealed bids against a bare decrypt + verify loop, and
submitting 4 KiB sealed bids at 32 in flight against the bare grpc.aio echo.

Keys: open_10k_bids_s, open_10k_bids_raw_s, open_10k_bids_vs_raw, bid_submit_rps_32,
bid_submit_vs_echo. `python -m bench.tendering_load` measures them alone (with its own echo
baseline and suite) and merges them into bench/results.json; bench/__main__.py may call
`open_bids_figures` and `bid_submit_rps` in its own run instead.
"""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import grpc
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from google.protobuf.timestamp_pb2 import Timestamp
from google.type import money_pb2
from kasvu.tendering.v1 import tendering_pb2, tendering_pb2_grpc
from sqlalchemy.ext.asyncio import create_async_engine

from bench.cpu import CpuMeter, CpuTally, cpu_figures
from bench.load import Load, closed_loop, timed_repeat
from bench.stats import median, ratio
from bench.suite_load import business_ids
from services.runtime.auth import Principal, Role
from services.runtime.clock import ManualClock
from services.runtime.db import Database, async_url
from services.runtime.dispatch import Dispatcher
from services.runtime.migrate import upgrade_async
from services.runtime.uow import Context
from services.runtime.writer import write_path_for
from services.tendering import bootstrap, handlers, model, sealing, store

REGION = "pirkanmaa"
LOTS = ("north", "south")
RESULTS = Path(__file__).parent / "results.json"


def _spec(now: datetime, committee: list[X25519PrivateKey]) -> model.CallSpec:
    return model.CallSpec(
        title="Bench call",
        service="recruitment",
        kind=model.CallKind.FRAMEWORK,
        lots=tuple(model.Lot(lot, lot, ("79600000-0",), Decimal(400_000), 3) for lot in LOTS),
        criteria=(
            model.Criterion("price", model.CriterionKind.PRICE, Decimal(60)),
            model.Criterion("plan", model.CriterionKind.QUALITY, Decimal(40), 5),
        ),
        declarations=(model.Declaration("no-tax-debt", model.DeclarationPart.EXCLUSION, "No tax debt"),),
        questions_deadline=now + timedelta(hours=1),
        submission_deadline=now + timedelta(hours=2),
        framework=model.FrameworkTerms(duration_months=48),
        committee=tuple(
            model.CommitteeMember(f"m{i}", sealing.raw_public(k)) for i, k in enumerate(committee)
        ),
        opening_threshold=2,
    )


def _plaintext(index: int, size: int) -> bytes:
    content = model.BidContent(Decimal(50_000 + index), {"plan": index % 6}, {"no-tax-debt": True})
    document = json.loads(content.encode())
    document["note"] = "x" * max(0, size - len(content.encode()) - 12)
    return json.dumps(document, separators=(",", ":")).encode()


@dataclass(frozen=True)
class SealedBid:
    bidder: str
    lot: str
    sealed: bytes
    signature: bytes
    public_key: bytes
    key_proof: bytes
    """The bidder's proof of holding its key, for enrolling it (a key is one bidder's only)."""


def _seal_all(call_name: str, public_key: bytes, count: int, size: int) -> list[SealedBid]:
    ids = business_ids(3_000_000)
    bids = []
    for index in range(count):
        key = Ed25519PrivateKey.generate()
        bidder, lot = next(ids), LOTS[index % len(LOTS)]
        sealed = sealing.seal_bid(_plaintext(index, size), public_key, call_name, lot, bidder)
        proof = sealing.sign_bidder_key(bidder, key)
        bids.append(SealedBid(bidder, lot, sealed, key.sign(sealed), sealing.raw_public(key), proof))
    return bids


def raw_open_seconds(call_name: str, private: X25519PrivateKey, bids: list[SealedBid]) -> float:
    """The floor: the same work of `cryptography` the service does per bid and nothing else, one
    Ed25519 verify (the key loaded from its raw bytes) and one HPKE open of every bid, in a
    bare loop."""
    started = time.perf_counter()
    for bid in bids:
        sealing.ed25519_public(bid.public_key, "key").verify(bid.signature, bid.sealed)
        sealing.SUITE.decrypt(bid.sealed, private, info=sealing.bid_info(call_name, bid.lot, bid.bidder))
    return time.perf_counter() - started


async def open_bids_figures(data_dir: Path, count: int = 10_000, size: int = 2048) -> dict[str, float]:
    """Loads `count` sealed bids into a closed call (SQLite, as the suite runs by default), then
    times the committee's last share: unwrapping the key, opening, verifying, scoring and
    writing every bid in one unit of work."""
    url = f"sqlite+aiosqlite:///{data_dir / 'tendering-bench.db'}"
    await upgrade_async(url, bootstrap.MIGRATIONS)
    db = Database(url)
    write_path = write_path_for(db)
    start = datetime(2026, 11, 2, 9, tzinfo=UTC)
    clock = ManualClock(start)
    dispatcher = Dispatcher(
        service="tendering",
        db=db,
        write_path=write_path,
        unit_of_work=store.unit_of_work_factory(bootstrap.receipt_key(data_dir)),
        event_types=bootstrap.EVENT_TYPES,
        clock=clock,
    )
    dispatcher.register_all(handlers.HANDLERS)
    committee = [X25519PrivateKey.generate() for _ in range(3)]

    def admin(member: str = "admin") -> Context:
        return Context(actor=Principal(Role.REGION_ADMIN, REGION, member))

    try:
        draft: model.Call = await dispatcher.handle(
            handlers.CreateCall(REGION, _spec(start, committee)), admin()
        )
        call: model.Call = await dispatcher.handle(handlers.PublishCall(REGION, draft.id), admin())
        bids = _seal_all(call.name, call.opening_public_key, count, size)
        engine = create_async_engine(async_url(url))
        async with engine.begin() as connection:
            await connection.execute(
                store.BIDS.insert(),
                [
                    {
                        "id": uuid.uuid4().hex,
                        "call_id": call.id,
                        "region": REGION,
                        "lot": bid.lot,
                        "bidder": bid.bidder,
                        "public_key": bid.public_key,
                        "sealed": bid.sealed,
                        "signature": bid.signature,
                        "ciphertext_sha256": sealing.digest(bid.sealed),
                        "received_at": start + timedelta(seconds=index),
                        "amendment": 0,
                        "state": "SEALED",
                        "receipt_signature": b"",
                    }
                    for index, bid in enumerate(bids)
                ],
            )
        await engine.dispose()
        clock.set(start + timedelta(hours=3))
        shares = [sealing.open_share(call.sealed_shares[i], committee[i], call.name, i) for i in range(2)]
        await dispatcher.handle(handlers.SubmitOpeningShare(REGION, call.id, shares[0]), admin("m0"))
        # The bare loop runs right before and right after the service's opening, so a change in
        # the machine's load (the cores are shared) weighs on both sides alike.
        private = sealing.unwrap_opening_key(call.wrapped_private_key, shares, call.name)
        raw_runs = [raw_open_seconds(call.name, private, bids)]
        started = time.perf_counter()
        opened: model.Call = await dispatcher.handle(
            handlers.SubmitOpeningShare(REGION, call.id, shares[1]), admin("m1")
        )
        service_s = time.perf_counter() - started
        raw_runs += [raw_open_seconds(call.name, private, bids) for _ in range(2)]
        raw_s = median(raw_runs)
        # The same work on both sides: every bid verified, opened and ranked, none refused.
        assert opened.state == model.CallState.EVALUATED and len(opened.scores) == count, opened.state
        assert all(score.rank > 0 for score in opened.scores), "some bid did not open"
    finally:
        await write_path.close()
        await db.dispose()
    return {
        "open_10k_bids_s": service_s,
        "open_10k_bids_raw_s": raw_s,
        "open_10k_bids_vs_raw": service_s / raw_s,
    }


def _timestamp(moment: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(moment)
    return stamp


async def bid_submit_rps(
    address: str,
    token: Callable[[Role, str, str], str],
    *,
    concurrency: int = 32,
    duration_s: float = 3.0,
    repeats: int = 3,
    size: int = 4096,
    tally: CpuTally | None = None,
) -> float:
    """Median bids per second submitted over gRPC with `concurrency` in flight, each a fresh
    bidder's 4 KiB sealed bid (sealing, signing and tokens prepared before the clock starts).
    With `tally`, the CPU of the timed loops and the bids they submitted are added to it."""
    committee = [X25519PrivateKey.generate() for _ in range(2)]
    now = datetime.now(UTC)
    admin = (("authorization", f"Bearer {token(Role.REGION_ADMIN, REGION, 'admin')}"),)
    async with grpc.aio.insecure_channel(address) as channel:
        stub = tendering_pb2_grpc.TenderingServiceStub(channel)
        message = tendering_pb2.Call(
            title="Bench call",
            service="recruitment",
            kind=tendering_pb2.CALL_KIND_FRAMEWORK,
            lots=[
                tendering_pb2.Lot(
                    lot=lot,
                    title=lot,
                    cpv_codes=["79600000-0"],
                    estimated_value=money_pb2.Money(currency_code="EUR", units=400_000),
                    max_suppliers=3,
                )
                for lot in LOTS
            ],
            criteria=[
                tendering_pb2.Criterion(code="price", kind=tendering_pb2.CRITERION_KIND_PRICE, weight="60"),
                tendering_pb2.Criterion(
                    code="plan", kind=tendering_pb2.CRITERION_KIND_QUALITY, weight="40", scale_max=5
                ),
            ],
            questions_deadline=_timestamp(now + timedelta(hours=1)),
            submission_deadline=_timestamp(now + timedelta(days=1)),
            framework=tendering_pb2.FrameworkTerms(duration_months=48),
            committee=[
                tendering_pb2.CommitteeMember(member=f"m{i}", public_key=sealing.raw_public(k))
                for i, k in enumerate(committee)
            ],
            opening_threshold=2,
        )
        draft = await stub.CreateCall(
            tendering_pb2.CreateCallRequest(parent=f"regions/{REGION}", call=message), metadata=admin
        )
        call = await stub.PublishCall(tendering_pb2.PublishCallRequest(name=draft.name), metadata=admin)
        fingerprint = sealing.key_fingerprint(call.opening_public_key)
        # 2 000 distinct bidders, used in turn: once round, a bidder's next bid replaces its
        # earlier one, as a provider revising its bid does.
        prepared = []
        bids = _seal_all(call.name, call.opening_public_key, 2000, size - 32)
        for bid in bids:
            request = tendering_pb2.SubmitBidRequest(
                parent=call.name,
                bid=tendering_pb2.Bid(
                    lot=bid.lot,
                    public_key=bid.public_key,
                    sealed_bid=bid.sealed,
                    signature=bid.signature,
                    opening_key_sha256=fingerprint,
                ),
            )
            metadata = (("authorization", f"Bearer {token(Role.PROVIDER, bid.bidder, 'bench')}"),)
            prepared.append((request, metadata))

        async def enrol(index: int) -> None:
            bid, (_, metadata) = bids[index], prepared[index]
            request = tendering_pb2.EnrolBidderKeyRequest(
                parent=f"bidders/{bid.bidder}",
                bidder_key=tendering_pb2.BidderKey(public_key=bid.public_key, proof=bid.key_proof),
            )
            await stub.EnrolBidderKey(request, metadata=metadata, timeout=10)

        # Every bidder's key enrolled before the clock starts, as a bid verifies only with one.
        await closed_loop(enrol, concurrency=concurrency, count=len(bids))
        position = 0

        async def submit(_: int) -> None:
            nonlocal position
            request, metadata = prepared[position % len(prepared)]
            position += 1
            await stub.SubmitBid(request, metadata=metadata, timeout=10)

        await closed_loop(submit, concurrency=concurrency, count=200)  # warm-up
        load = Load(None, concurrency, max_seconds=duration_s)
        return median([await timed_repeat(submit, load, tally) for _ in range(repeats)])


async def measure(data_dir: Path) -> dict[str, float]:
    from bench.echo import echo_rps, echo_server
    from kasvuctl.localsuite import LocalSuite
    from services.runtime.auth import mint_token

    results = await open_bids_figures(data_dir)
    log(f"open 10k bids: {results['open_10k_bids_s']:.2f} s, raw {results['open_10k_bids_raw_s']:.2f} s")
    suite = LocalSuite(data_dir / "suite")
    try:
        await suite.start()
        with echo_server() as echo:
            results["echo_rps_32"] = await echo_rps(echo.address, 32, 3.0, 3)

        def token(role: Role, organisation: str, subject: str) -> str:
            return mint_token(suite.private_key(), Principal(role, organisation, subject))

        bid_cpu = CpuTally(CpuMeter.of_client_and_suite(suite))
        results["bid_submit_rps_32"] = await bid_submit_rps(suite.address("tendering"), token, tally=bid_cpu)
        results.update(cpu_figures("bid_submit", bid_cpu))
    finally:
        suite.stop()
    results["bid_submit_vs_echo"] = ratio(results["bid_submit_rps_32"], results["echo_rps_32"])
    log(f"bid submit: {results['bid_submit_rps_32']:.0f} rps vs echo {results['echo_rps_32']:.0f}")
    return results


def log(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="kasvu-tendering-bench-") as directory:
        results = asyncio.run(measure(Path(directory)))
    merged = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    merged.update({key: value for key, value in results.items() if key != "echo_rps_32"})
    merged["tendering_echo_rps_32"] = results["echo_rps_32"]
    RESULTS.write_text(json.dumps(merged, indent=2, sort_keys=True) + "\n")
    print(json.dumps(results, indent=2, sort_keys=True))


if __name__ == "__main__":
    main()
