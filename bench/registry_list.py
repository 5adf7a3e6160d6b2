"""The public provider list through the gateway: p99 of a filtered page of 50 with 1 000 and with
10 000 admitted providers in a region, measured in the same run.

`await provider_list_figures(suite)` returns `provider_list_p99_ms_1k`, `provider_list_p99_ms_10k`
and `provider_list_10k_vs_1k` (with p50s and the sample count beside them);
`python -m bench.registry_list` runs it on a fresh local suite and prints them.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import grpc
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from kasvu.registry.v1 import registry_pb2, registry_pb2_grpc

from bench.load import closed_loop
from bench.stats import percentile, ratio
from bench.suite_load import REQUIREMENT, SERVICE, bearer, business_ids
from kasvuctl.localsuite import LocalSuite
from services.runtime.auth import Role

# Ten municipalities of Pirkanmaa and Lapland, three languages: a filter picks about a tenth.
MUNICIPALITIES = ("837", "536", "604", "980", "211", "418", "562", "619", "698", "320")
LANGUAGES = ("fi", "sv", "en")
SIZES = {"1k": ("kainuu", 1_000), "10k": ("lappi", 10_000)}
"""Each size in a region of its own, so both lists stand side by side in one run."""


async def fill_region(
    suite: LocalSuite,
    registry: registry_pb2_grpc.RegistryServiceStub,
    region: str,
    count: int,
    first_body: int,
) -> None:
    """Publishes terms in `region` and admits `count` providers, each in two municipalities and one
    or two languages, 32 registrations in flight."""
    parent = f"regions/{region}/services/{SERVICE}"
    terms = await registry.PublishTerms(
        registry_pb2.PublishTermsRequest(
            parent=parent,
            terms=registry_pb2.Terms(
                title="Rekrytointi",
                requirements=[
                    registry_pb2.Requirement(
                        code=REQUIREMENT,
                        description="In the prepayment register",
                        kind=registry_pb2.REQUIREMENT_KIND_DECLARATION,
                    )
                ],
            ),
        ),
        metadata=bearer(suite.token(Role.REGION_ADMIN, region)),
    )
    key = Ed25519PrivateKey.generate()
    public_key = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    signature = key.sign(bytes.fromhex(terms.content_hash))
    ids = list(itertools.islice(business_ids(first_body), count))

    async def register(index: int) -> None:
        business_id = ids[index]
        reply = await registry.RegisterProvider(
            registry_pb2.RegisterProviderRequest(
                parent=parent,
                registration=registry_pb2.Registration(
                    terms=terms.name,
                    business_id=business_id,
                    display_name=f"Bench {business_id}",
                    evidence=[registry_pb2.Evidence(requirement_code=REQUIREMENT, declared=True)],
                    public_key=public_key,
                    terms_signature=signature,
                    municipalities=[
                        MUNICIPALITIES[index % len(MUNICIPALITIES)],
                        MUNICIPALITIES[(index + 3) % len(MUNICIPALITIES)],
                    ],
                    languages=list(LANGUAGES[index % 3 : index % 3 + 1 + index % 2]),
                ),
            ),
            metadata=bearer(suite.token(Role.PROVIDER, business_id)),
            timeout=60,
        )
        if reply.state != registry_pb2.REGISTRATION_STATE_ADMITTED:
            raise RuntimeError(f"{business_id} not admitted")

    await closed_loop(register, concurrency=32, count=count)


async def list_latencies_ms(
    client: aiohttp.ClientSession, base_url: str, region: str, samples: int
) -> list[float]:
    """Latencies of one page of 50 filtered by municipality and language, one request at a time
    (aiohttp: httpx's own CPU per request would be a fair part of the figure)."""
    latencies = []
    url = f"{base_url}/v1/regions/{region}/services/{SERVICE}/providers"
    for index in range(samples):
        params = {
            "municipality": MUNICIPALITIES[index % len(MUNICIPALITIES)],
            "language": LANGUAGES[index % len(LANGUAGES)],
            "pageSize": "50",
        }
        started = time.perf_counter()
        async with client.get(url, params=params) as response:
            text = await response.text()
        latencies.append((time.perf_counter() - started) * 1000)
        if response.status != 200 or not json.loads(text).get("providers"):
            raise RuntimeError(f"listing failed: {response.status} {text[:200]}")
    return latencies


async def provider_list_figures(suite: LocalSuite, samples: int = 500) -> dict[str, float]:
    """Fills a region with 1 000 and another with 10 000 admitted providers over gRPC, then measures
    the list through the gateway, alternating the two so both see the same background."""
    async with grpc.aio.insecure_channel(suite.address("registry")) as channel:
        registry = registry_pb2_grpc.RegistryServiceStub(channel)
        first_body = 3_000_000
        for region, count in SIZES.values():
            await fill_region(suite, registry, region, count, first_body)
            first_body += count * 2
    figures: dict[str, list[float]] = {size: [] for size in SIZES}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as client:
        for region, _ in SIZES.values():  # warm both paths before timing
            await list_latencies_ms(client, suite.gateway_url, region, 20)
        for _ in range(5):
            for size, (region, _) in SIZES.items():
                figures[size].extend(await list_latencies_ms(client, suite.gateway_url, region, samples // 5))
    p99_1k, p99_10k = percentile(figures["1k"], 99), percentile(figures["10k"], 99)
    return {
        "provider_list_p50_ms_1k": percentile(figures["1k"], 50),
        "provider_list_p50_ms_10k": percentile(figures["10k"], 50),
        "provider_list_samples": len(figures["1k"]),
        "provider_list_p99_ms_1k": p99_1k,
        "provider_list_p99_ms_10k": p99_10k,
        "provider_list_10k_vs_1k": ratio(p99_10k, p99_1k),
    }


async def _main() -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="kasvu-bench-list-") as tmp:
        suite = LocalSuite(Path(tmp))
        try:
            await suite.start()
            return await provider_list_figures(suite)
        finally:
            suite.stop()


if __name__ == "__main__":
    results = asyncio.run(_main())
    print(json.dumps(results, indent=2, sort_keys=True))
    sys.exit(0)
