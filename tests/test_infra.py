"""infra/: the Kubernetes manifests against the Kubernetes API schemas (offline, bundled by
kubernetes-validate), and the structure the deployment relies on in every file: probes and
grace periods that match the drain, a non-root image, two app instances behind a WebSocket
proxy, a hot-reloadable numbers YAML.

What these tests cannot do here (no network, no Docker daemon, no cluster) is said in the
README's "Deployment and scale-out" section.
"""

from __future__ import annotations

import asyncio
import copy
import ipaddress
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from telephony.config import ConfigStore, check
from telephony.settings import Settings
from tests import system_tools

REPO = Path(__file__).resolve().parents[1]
INFRA = REPO / "infra"
K8S = INFRA / "k8s"
K8S_VERSIONS = ["1.29", "1.33"]  # oldest and a recent supported Kubernetes minor
MANIFESTS = sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")
MEDIA_TIMEOUT_S = 3600  # a call may last max_call_seconds (3600 s by default)


def documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def resources() -> dict[tuple[str, str], dict[str, Any]]:
    """(kind, name) -> resource, over every manifest."""
    found = {}
    for path in MANIFESTS:
        for doc in documents(path):
            found[(doc["kind"], doc["metadata"]["name"])] = doc
    return found


def one(kind: str, name: str) -> dict[str, Any]:
    return resources()[(kind, name)]


def seconds(value: str | int) -> float:
    """A compose duration ("330s", "5m30s") or a plain number of seconds."""
    if isinstance(value, int | float):
        return float(value)
    parts = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?", value)
    assert parts and value, f"not a duration: {value!r}"
    h, m, s = (int(g or 0) for g in parts.groups())
    return h * 3600 + m * 60 + s


def drain_timeout() -> float:
    return float(one("ConfigMap", "telephony-env")["data"]["TELEPHONY_DRAIN_TIMEOUT_S"])


# --- Kubernetes: schemas ------------------------------------------------------------------------


def test_every_manifest_is_found() -> None:
    kinds = {kind for kind, _ in resources()}
    assert kinds == {
        "ConfigMap",
        "Secret",
        "Deployment",
        "Service",
        "Ingress",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
    }
    listed = yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"]
    assert sorted(listed) == sorted(p.name for p in MANIFESTS)


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_manifest_matches_the_kubernetes_schema(path: Path, version: str) -> None:
    # strict: unknown fields (typos) are errors too, as the API server's field validation is.
    for doc in documents(path):
        kubernetes_validate.validate(doc, version, strict=True)


def _probe_without_port(deployment: dict[str, Any]) -> None:
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    container["readinessProbe"]["httpGet"] = {"path": "/readyz"}  # port is required


@pytest.mark.parametrize(
    "breakage",
    [
        lambda d: d["spec"].__setitem__("replicas", "two"),
        lambda d: d["spec"]["template"]["spec"].__setitem__("terminationGracePeriod", 360),
        _probe_without_port,
    ],
    ids=["wrong type", "unknown field", "missing required field"],
)
def test_the_schema_check_catches_broken_manifests(breakage: Any) -> None:
    broken = copy.deepcopy(one("Deployment", "telephony"))
    breakage(broken)
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSIONS[-1], strict=True)


def test_kustomize_builds_every_resource() -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed (optional: install it to check `kubectl kustomize`)")
    out = subprocess.run(
        [kubectl, "kustomize", str(K8S)], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    built = {(d["kind"], d["metadata"]["name"]) for d in yaml.safe_load_all(out) if d}
    assert built == set(resources())


# --- Kubernetes: what the drain and the scale-out rely on ---------------------------------------


def test_deployment_probes_prestop_and_grace_period_match_the_drain() -> None:
    deployment = one("Deployment", "telephony")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["startupProbe"]["httpGet"]["path"] == "/healthz"
    # The readiness probe notices a drain within a few seconds.
    readiness = container["readinessProbe"]
    assert readiness["periodSeconds"] * readiness["failureThreshold"] <= 5
    pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    # The kubelet's SIGKILL comes after preStop + drain + goodbyes + shutdown.
    from telephony.drain import END_GRACE_S, SHUTDOWN_GRACE_S

    needed = float(pre_stop[1]) + drain_timeout() + END_GRACE_S + SHUTDOWN_GRACE_S
    assert pod["terminationGracePeriodSeconds"] >= needed
    # Rolling updates never take a pod away before its replacement is ready.
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


def test_pod_runs_as_non_root_with_a_read_only_root() -> None:
    pod = one("Deployment", "telephony")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    (container,) = pod["containers"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False


def test_numbers_configmap_is_mounted_as_a_directory_for_hot_reload() -> None:
    pod = one("Deployment", "telephony")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    config_path = Path(one("ConfigMap", "telephony-env")["data"]["TELEPHONY_CONFIG"])
    volume = next(v for v in pod["volumes"] if v.get("configMap"))
    assert volume["configMap"]["name"] == "telephony-numbers"
    mount = next(m for m in container["volumeMounts"] if m["name"] == volume["name"])
    assert "subPath" not in mount, "subPath mounts never see ConfigMap updates"
    assert Path(mount["mountPath"]) == config_path.parent
    assert config_path.name in one("ConfigMap", "telephony-numbers")["data"]


def test_numbers_configmap_holds_a_valid_numbers_yaml(tmp_path: Path) -> None:
    path = tmp_path / "numbers.yaml"
    path.write_text(one("ConfigMap", "telephony-numbers")["data"]["numbers.yaml"])
    ok, text = check(path)
    assert ok, text


def test_env_and_secret_keys_are_settings_the_app_reads() -> None:
    known = {field.alias for field in Settings.model_fields.values()} | {"OPENAI_API_KEY"}
    env = one("ConfigMap", "telephony-env")["data"]
    secret = one("Secret", "telephony-secrets")["stringData"]
    assert set(env) <= known, set(env) - known
    assert set(secret) <= known, set(secret) - known
    # The values every pod must share to take either hop of any call.
    for shared in ("TELEPHONY_STREAM_TOKEN_SECRET", "TELEPHONY_SESSION_SECRET"):
        assert shared in secret
    assert secret["TELEPHONY_DATABASE_URL"].startswith("postgresql+asyncpg://")
    # Placeholders only: nothing that looks like a real key is committed.
    for key, value in secret.items():
        if key not in ("TELEPHONY_DATABASE_URL", "TWILIO_ACCOUNT_SID"):
            assert value.startswith("change-me"), key
    assert "change-me" in secret["TELEPHONY_DATABASE_URL"]
    assert set(secret["TWILIO_ACCOUNT_SID"][2:]) == {"x"}
    container = one("Deployment", "telephony")["spec"]["template"]["spec"]["containers"][0]
    refs = {next(iter(ref.values()))["name"] for ref in container["envFrom"]}
    assert refs == {"telephony-env", "telephony-secrets"}


def test_service_ingress_hpa_and_pdb_point_at_the_deployment() -> None:
    deployment = one("Deployment", "telephony")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    port_names = {p["name"] for p in container["ports"]}
    service = one("Service", "telephony")
    assert service["spec"]["selector"].items() <= labels.items()
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= port_names
    pdb = one("PodDisruptionBudget", "telephony")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    hpa = one("HorizontalPodAutoscaler", "telephony")
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "telephony",
    }
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Pods"
    assert metric["pods"]["metric"]["name"] == "telephony_calls_active"  # telephony/metrics.py
    max_calls = int(one("ConfigMap", "telephony-env")["data"]["TELEPHONY_MAX_CALLS"])
    assert 0 < float(metric["pods"]["target"]["averageValue"]) < max_calls
    for ingress in (one("Ingress", "telephony-media"), one("Ingress", "telephony")):
        for rule in ingress["spec"]["rules"]:
            for path in rule["http"]["paths"]:
                assert path["backend"]["service"]["name"] == "telephony"


def test_ingress_gives_the_media_socket_long_timeouts_and_hides_metrics() -> None:
    media = one("Ingress", "telephony-media")
    notes = media["metadata"]["annotations"]
    for key in ("proxy-read-timeout", "proxy-send-timeout"):
        assert int(notes[f"nginx.ingress.kubernetes.io/{key}"]) >= MEDIA_TIMEOUT_S
    paths = [
        p["path"]
        for ingress in (media, one("Ingress", "telephony"))
        for rule in ingress["spec"]["rules"]
        for p in rule["http"]["paths"]
    ]
    assert "/twilio/media" in paths and "/twilio/voice" in paths and "/twilio/status" in paths
    for private in ("/metrics", "/healthz", "/readyz"):
        assert not any(private == p or (p != "/" and private.startswith(p)) for p in paths)


async def test_configmap_style_update_is_hot_reloaded(tmp_path: Path) -> None:
    """The kubelet updates a ConfigMap volume by swapping a `..data` symlink to a new
    directory: the file's path stays, its inode changes. The app's watcher must notice."""
    text = one("ConfigMap", "telephony-numbers")["data"]["numbers.yaml"]
    first = tmp_path / "..2026_01_01_00_00_00.000000001"
    first.mkdir()
    (first / "numbers.yaml").write_text(text)
    (tmp_path / "..data").symlink_to(first.name)
    (tmp_path / "numbers.yaml").symlink_to("..data/numbers.yaml")
    store = ConfigStore(tmp_path / "numbers.yaml", poll_interval_s=0.02)
    watcher = asyncio.create_task(store.watch())
    try:
        second = tmp_path / "..2026_01_01_00_01_00.000000002"
        second.mkdir()
        (second / "numbers.yaml").write_text(text.replace("+15550001000", "+15550001999"))
        tmp = tmp_path / "..data_tmp"
        tmp.symlink_to(second.name)
        os.replace(tmp, tmp_path / "..data")  # the kubelet's atomic swap
        shutil.rmtree(first)
        for _ in range(250):
            if store.version == 2:
                break
            await asyncio.sleep(0.02)
    finally:
        watcher.cancel()
    assert store.version == 2, store.last_error
    assert "+15550001999" in store.current.numbers


# --- docker-compose.yml -------------------------------------------------------------------------


def compose() -> dict[str, Any]:
    return yaml.safe_load((INFRA / "docker-compose.yml").read_text())  # resolves the << merges


def app_services(spec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        name: svc
        for name, svc in spec["services"].items()
        if svc.get("build", {}).get("dockerfile") == "infra/Dockerfile"
    }


def test_compose_has_two_app_instances_postgres_and_a_proxy() -> None:
    spec = compose()
    apps = app_services(spec)
    assert sorted(apps) == ["app1", "app2"]
    services = spec["services"]
    assert services["postgres"]["image"].startswith("postgres:")
    assert "healthcheck" in services["postgres"]
    proxy = services["proxy"]
    assert proxy["image"].startswith("nginx:")
    assert "./nginx.conf:/etc/nginx/nginx.conf:ro" in proxy["volumes"]
    assert set(proxy["depends_on"]) == set(apps)
    for name, app in apps.items():
        assert app["build"]["context"] == "..", name
        env = app["environment"]
        assert env["TELEPHONY_DATABASE_URL"].startswith("postgresql+asyncpg://"), name
        assert "@postgres:5432/" in env["TELEPHONY_DATABASE_URL"]
        assert app["depends_on"]["postgres"]["condition"] == "service_healthy"
        assert any(e["path"] == "../.env" for e in app["env_file"])
        # The numbers YAML is mounted where TELEPHONY_CONFIG points.
        mounts = {v.split(":")[1]: v.split(":")[0] for v in app["volumes"]}
        source = mounts[env["TELEPHONY_CONFIG"]]
        assert (INFRA / source).is_file()
        # A stop never SIGKILLs a draining instance.
        from telephony.drain import END_GRACE_S, SHUTDOWN_GRACE_S

        needed = float(env["TELEPHONY_DRAIN_TIMEOUT_S"]) + END_GRACE_S + SHUTDOWN_GRACE_S
        assert seconds(app["stop_grace_period"]) >= needed, name
        assert app.get("stop_signal", "SIGTERM") == "SIGTERM"


def test_nginx_proxies_websockets_to_every_app_instance() -> None:
    conf = (INFRA / "nginx.conf").read_text()
    upstream = re.search(r"upstream telephony \{(.*?)\}", conf, re.S)
    assert upstream is not None
    servers = set(re.findall(r"server (\w+):8000", upstream.group(1)))
    assert servers == set(app_services(compose()))
    media = re.search(r"location = /twilio/media \{(.*?)\}", conf, re.S)
    assert media is not None
    block = media.group(1)
    assert "proxy_http_version 1.1;" in block
    assert "proxy_set_header Upgrade $http_upgrade;" in block
    assert "proxy_set_header Connection $connection_upgrade;" in block
    for directive in ("proxy_read_timeout", "proxy_send_timeout"):
        found = re.search(rf"{directive} (\d+)s;", block)
        assert found and int(found.group(1)) >= MEDIA_TIMEOUT_S, directive
    assert re.search(r"location = /metrics \{\s*return 404;", conf)


def test_nginx_accepts_the_config(tmp_path: Path) -> None:
    """`nginx -t` (nginx found, or installed from Debian's packages when the tests may). The
    compose service names do not resolve here, so the upstream hosts are swapped for 127.0.0.1
    in a copy."""
    found = system_tools.nginx()
    if found.path is None:
        pytest.skip(found.reason)
    nginx = found.path
    conf = (INFRA / "nginx.conf").read_text()
    for name in app_services(compose()):
        conf = conf.replace(f"server {name}:8000", "server 127.0.0.1:8000")
    conf = conf.replace("worker_processes auto;", f"worker_processes 1;\npid {tmp_path}/nginx.pid;")
    path = tmp_path / "nginx.conf"
    path.write_text(conf)
    done = subprocess.run(
        [nginx, "-t", "-q", "-c", str(path), "-p", str(tmp_path), "-e", str(tmp_path / "e.log")],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr


def test_the_proxies_limit_each_client_since_the_apps_exempt_them() -> None:
    """The apps do not apply TELEPHONY_HTTP_CLIENT_RATE to a trusted proxy (every client
    reaches them from it): the proxy must limit requests per real client address instead."""
    conf = (INFRA / "nginx.conf").read_text()
    zone = re.search(r"limit_req_zone \$binary_remote_addr zone=(\w+):\S+ rate=(\d+)r/s;", conf)
    assert zone is not None
    assert "limit_req_status 429;" in conf
    for location in (r"location = /twilio/media \{(.*?)\}", r"location / \{(.*?)\}"):
        block = re.search(location, conf, re.S)
        assert block is not None
        assert f"limit_req zone={zone.group(1)} " in block.group(1), location
    for ingress in yaml.safe_load_all((INFRA / "k8s" / "ingress.yaml").read_text()):
        notes = ingress["metadata"]["annotations"]
        assert int(notes["nginx.ingress.kubernetes.io/limit-rps"]) > 0, ingress["metadata"]


def test_client_addresses_come_from_the_proxy_the_apps_trust() -> None:
    """The login limiter keys on the client address: behind the proxy every client shared one
    bucket, and from loopback X-Forwarded-For was believed whatever it said."""
    conf = (INFRA / "nginx.conf").read_text()
    forwarded = re.findall(r"proxy_set_header X-Forwarded-For (\S+);", conf)
    assert forwarded and set(forwarded) == {"$remote_addr"}  # never what the client sent
    spec = compose()
    ((network, attached),) = spec["services"]["proxy"]["networks"].items()
    proxy_ip = ipaddress.ip_address(attached["ipv4_address"])
    subnet = spec["networks"][network]["ipam"]["config"][0]["subnet"]
    assert proxy_ip in ipaddress.ip_network(subnet)
    for name, app in app_services(spec).items():
        assert app["environment"]["TELEPHONY_TRUSTED_PROXIES"] == str(proxy_ip), name
        assert network in app["networks"] and "ports" not in app, name  # reached via the proxy
    trusted = one("ConfigMap", "telephony-env")["data"]["TELEPHONY_TRUSTED_PROXIES"]
    networks = [ipaddress.ip_network(item.strip()) for item in trusted.split(",")]
    assert networks and all(net.is_private for net in networks)


def test_proxy_access_log_keeps_no_query_strings_or_referers() -> None:
    conf = (INFRA / "nginx.conf").read_text()
    fmt = re.search(r"log_format (\w+) (.*?);", conf, re.S)
    assert fmt is not None
    assert re.search(rf"access_log \S+ {fmt.group(1)};", conf)
    leaks = re.findall(r"\$(request|args|query_string|request_uri|http_referer)\b", fmt.group(2))
    assert not leaks, leaks


# --- Dockerfile ---------------------------------------------------------------------------------


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments), continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", (INFRA / "Dockerfile").read_text())
    steps = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            steps.append((word.upper(), rest.strip()))
    return steps


def test_dockerfile_is_slim_non_root_with_healthcheck_and_drain_signal() -> None:
    steps = dockerfile()
    froms = [args for word, args in steps if word == "FROM"]
    assert froms and all(f.startswith("python:3.12-slim") for f in froms)
    final = max(i for i, (word, _) in enumerate(steps) if word == "FROM")
    runtime = steps[final:]
    users = [args for word, args in runtime if word == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    (health,) = [args for word, args in runtime if word == "HEALTHCHECK"]
    assert "/healthz" in health
    assert ("STOPSIGNAL", "SIGTERM") in runtime
    assert ("EXPOSE", "8000") in runtime
    assert any(word == "VOLUME" and "/data" in args for word, args in runtime)
    cmd = " ".join(args for word, args in runtime if word in ("ENTRYPOINT", "CMD"))
    assert '"telephony"' in cmd and '"serve"' in cmd and '"0.0.0.0"' in cmd


def test_dockerfile_copies_only_what_dockerignore_lets_in() -> None:
    allowed = {
        line.removeprefix("!").rstrip("/")
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.startswith("!")
    }
    copied = [
        src
        for word, args in dockerfile()
        if word == "COPY" and "--from=" not in args
        for src in args.split()[:-1]
    ]
    assert copied
    for src in copied:
        assert src.rstrip("/") in allowed, src
        assert (REPO / src).exists(), src
    assert ".env" not in allowed and "data" not in allowed


def test_package_dependencies_cover_the_async_database_driver() -> None:
    """The image installs only the package's own dependencies. SQLAlchemy 2.1 no longer pulls
    in greenlet, which its asyncio layer needs; in the test environment playwright brings it,
    which hid its absence from a production install."""
    import tomllib

    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    assert any(re.match(r"sqlalchemy\[[^\]]*asyncio", d, re.I) for d in deps), deps
