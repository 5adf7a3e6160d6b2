"""The deployment files keep up with the catalog and the NATS users: compose's NATS config is
valid with the users `kasvu nats-auth` makes, and every service signs in as itself and is
named in the Kubernetes network policy. (No Docker or Kubernetes here: these read the files.)"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from kasvuctl.natsauth import AUTH_CONF, NatsAuth
from services.runtime.catalog import CATALOG
from tests.conftest import NATS_SERVER

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"


def test_compose_nats_config_is_valid_with_the_generated_users(tmp_path: Path, nats_users: NatsAuth) -> None:
    shutil.copy(DEPLOY / "compose" / "nats.conf", tmp_path / "nats.conf")
    shutil.copy(nats_users.config_file, tmp_path / AUTH_CONF)
    checked = subprocess.run(
        [str(NATS_SERVER), "-c", str(tmp_path / "nats.conf"), "-t"],
        env={**os.environ, "SERVER_NAME": "nats-1"},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert 'include "auth.conf"' in (DEPLOY / "compose" / "nats.conf").read_text()


def test_every_service_signs_in_to_nats_as_itself_in_compose_and_kubernetes() -> None:
    compose = (DEPLOY / "compose" / "compose.yaml").read_text()
    for service in CATALOG:
        assert f"env_file: [./nats-auth/{service.name}.env]" in compose, service.name
        manifest = (DEPLOY / "k8s" / f"{service.name}.yaml").read_text()
        assert f"name: kasvu-nats-{service.name}" in manifest, service.name
    assert compose.count("./nats-auth/auth.conf:/etc/nats/auth.conf:ro") == 3
    assert "nats-auth" not in (DEPLOY / "k8s" / "gateway.yaml").read_text()


def test_the_network_policy_admits_every_service_to_nats_and_the_gateway_to_every_service() -> None:
    policy = (DEPLOY / "k8s" / "networkpolicy.yaml").read_text()
    names = f"values: [{', '.join(service.name for service in CATALOG)}]"
    assert policy.count(names) == 3
    for service in CATALOG:
        assert f"- port: {service.grpc_port}\n" in policy
    assert "networkpolicy.yaml" in (DEPLOY / "k8s" / "kustomization.yaml").read_text()
