"""Baseline: one JetStream publish -> pull-consume round trip at a time, as the services' events travel."""

from __future__ import annotations

import time

import nats
from nats.js.api import AckPolicy, ConsumerConfig, StorageType, StreamConfig

from services.runtime.natsaccess import NatsAccess

STREAM = "BENCH_ROUNDTRIP"
SUBJECT = "bench.roundtrip"


async def jetstream_roundtrips(nats_url: str, count: int, access: NatsAccess) -> list[float]:
    """Milliseconds from publish (awaiting its ack) to the message in a pull consumer's hands;
    `access` signs in as a user that may use the bench's own stream (the administrator)."""
    nc = await nats.connect(nats_url, **access.connect_options())
    try:
        js = nc.jetstream()
        # File storage like the suite's streams, so the server's fsync policy applies alike.
        await js.add_stream(StreamConfig(name=STREAM, subjects=[SUBJECT], storage=StorageType.FILE))
        subscription = await js.pull_subscribe(
            SUBJECT,
            durable="bench",
            stream=STREAM,
            config=ConsumerConfig(durable_name="bench", ack_policy=AckPolicy.EXPLICIT),
        )
        samples = []
        for index in range(count):
            start = time.perf_counter()
            await js.publish(SUBJECT, str(index).encode())
            [message] = await subscription.fetch(1, timeout=5)
            samples.append((time.perf_counter() - start) * 1000)
            await message.ack()
        await js.delete_stream(STREAM)
        return samples
    finally:
        await nc.close()
