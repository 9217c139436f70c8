"""deploy/ and docker-compose.yml read, not run: the nginx and haproxy configs are SSE-safe,
and (Docker does not run in the test environment) the compose file, the Dockerfile and the
Kubernetes manifests are checked for structure and against the real settings object. (The
proxies running for real: tests/system/test_deploy.py.)"""

from __future__ import annotations

import ipaddress
import json
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import yaml

from devtools.cluster import NGINX_ADDRESS, LocalCluster
from gateway.cli import main as gateway_main
from gateway.http.app import create_app
from gateway.http.server import uvicorn_options
from gateway.http.stream import STREAM_PATHS
from gateway.settings import ENV_PREFIX, FIELDS, SECRET_FIELDS, BridgeSettings, Settings
from publisher.connection import parse_sentinel
from publisher.demo import demo_identities
from tests.support.deploy import (
    COMPOSE,
    DEPLOY,
    GATEWAYS,
    HAPROXY_CFG,
    K8S,
    NGINX_CONF,
    NGINX_DIR,
    ROOT,
)
from tests.support.gateway_server import RunningGateway
from tests.support.redis_users import (
    ACLFILE,
    DEMO_PASSWORDS,
    DEMO_SERVICE_PASSWORDS,
    DEMO_SUPERUSER,
    ROLE_OF_SERVICE,
    compose,
    redis_client_of,
    redis_command,
)

#: the Secret with the Redis ACL users (redis-acl.yaml), besides the gateway's own Secret
REDIS_ACL_SECRET = "Secret/kev-redis-acl"
#: the per-pod gauge hpa.yaml scales on: open streams
AUTOSCALING_METRIC = "kev_clients"

# -- nginx ---------------------------------------------------------------------------------------


def _nginx_text(path: Path) -> str:
    return re.sub(r"#[^\n]*", "", path.read_text())


def _block(text: str, opener: str) -> str:
    """The body of the first ``opener { ... }`` block in ``text``."""
    start = text.index(opener)
    depth = 0
    for i in range(text.index("{", start), len(text)):
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        if depth == 0:
            return text[text.index("{", start) + 1 : i]
    raise AssertionError(f"unbalanced block {opener!r}")


def _directives(block: str) -> set[str]:
    """The simple directives directly in ``block`` (nested blocks dropped), whitespace folded."""
    flat = block
    while re.search(r"\{[^{}]*\}", flat):
        flat = re.sub(r"[^;{}]*\{[^{}]*\}", "", flat)
    return {" ".join(part.split()) for part in flat.split(";") if part.strip()}


def _seconds(value: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
    match = re.fullmatch(r"(\d+)(ms|s|m|h|d)?", value)
    assert match, f"not a duration: {value!r}"
    return int(match[1]) * units[match[2] or "s"]


def test_nginx_config_is_sse_safe() -> None:
    text = _nginx_text(NGINX_CONF)
    top = _directives(text)
    http = _directives(_block(text, "http {"))
    location = _directives(_block(_block(text, "server {"), "location / {"))
    # Runs unprivileged under any prefix, and under the official image's -g 'daemon off;'.
    assert not {d for d in top if d.split()[0] in ("daemon", "user")}
    assert "pid nginx.pid" in top
    # Two descriptors per stream (client + upstream).
    nofile = re.search(r"worker_rlimit_nofile (\d+);", text)
    connections = re.search(r"worker_connections (\d+);", text)
    assert nofile and connections and int(nofile[1]) >= 2 * int(connections[1])
    assert {"include upstream.conf", "gzip off"} <= http
    for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
        assert f"{kind}_temp_path {kind}_temp" in http
    assert "include listen.conf" in _directives(_block(text, "server {"))
    # No URI part: the target goes upstream as sent; Host as the client sent it.
    assert "proxy_pass http://gateways" in location
    assert {
        "proxy_buffering off",
        "proxy_cache off",
        "proxy_http_version 1.1",
        'proxy_set_header Connection ""',
        "proxy_set_header Host $http_host",
        "proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for",
        "proxy_next_upstream error timeout http_502 http_503",
    } <= location
    timeouts = {
        d.split()[0]: _seconds(d.split()[1]) for d in location if d.split()[0].endswith("_timeout")
    }
    assert timeouts["proxy_read_timeout"] >= 3600
    assert timeouts["proxy_send_timeout"] >= 3600
    assert timeouts["send_timeout"] >= 30
    assert timeouts["proxy_connect_timeout"] <= 5

    upstream = _nginx_text(NGINX_DIR / "upstream.compose.conf")
    group = _directives(_block(upstream, "upstream gateways {"))
    servers = sorted(d for d in group if d.startswith("server "))
    assert [s.split()[1] for s in servers] == [f"{name}:8081" for name in GATEWAYS]
    assert all("max_fails=" in s and "fail_timeout=" in s for s in servers)
    assert any(d.startswith("keepalive ") for d in group)
    listen = _directives(_nginx_text(NGINX_DIR / "listen.compose.conf"))
    assert listen == {"listen 8080"}


# -- haproxy -------------------------------------------------------------------------------------


def test_haproxy_config_is_sse_safe() -> None:
    lines = {
        " ".join(line.split())
        for line in re.sub(r"#[^\n]*", "", HAPROXY_CFG.read_text()).splitlines()
        if line.strip()
    }
    assert {
        "mode http",
        "balance leastconn",
        "option httpchk GET /ready",
        "option forwardfor",
        "option redispatch 1",
    } <= lines
    timeouts = {
        line.split()[1]: _seconds(line.split()[2]) for line in lines if line.startswith("timeout ")
    }
    for name in ("client", "server", "tunnel"):
        assert timeouts[name] >= 3600, name
    assert timeouts["connect"] <= 5
    assert any(line.startswith("retry-on conn-failure") and "503" in line for line in lines)
    # Buffering or compressing responses, or cutting streams of a failed check: none of it.
    assert not any(
        word in line
        for line in lines
        for word in ("http-buffer-request", "compression", "shutdown-sessions")
    )
    servers = sorted(line.split()[1:3] for line in lines if line.startswith("server "))
    assert servers == [[name, f"{name}:8081"] for name in GATEWAYS]


# -- Dockerfile ----------------------------------------------------------------------------------


def _instructions(path: Path) -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", path.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            out.append((keyword.upper(), " ".join(rest.split())))
    return out


def test_dockerfile() -> None:
    steps = _instructions(DEPLOY / "Dockerfile")
    froms = [rest for kw, rest in steps if kw == "FROM"]
    assert froms and all(f.startswith("python:3.11-slim") for f in froms)
    final = steps[max(i for i, (kw, _) in enumerate(steps) if kw == "FROM") :]
    users = [rest for kw, rest in final if kw == "USER"]
    assert users and users[-1].split(":")[0] not in ("0", "root")
    runs = " ".join(rest for kw, rest in steps if kw == "RUN")
    # the lock, hash-checked, and nothing resolved at build time
    assert "pip install --require-hashes --no-deps -r requirements/run.txt" in runs
    assert "pip install --no-deps --no-build-isolation ." in runs
    assert ("EXPOSE", "8081") in final
    (healthcheck,) = [rest for kw, rest in final if kw == "HEALTHCHECK"]
    assert "/health" in healthcheck and "urllib" in healthcheck
    (cmd,) = [rest for kw, rest in final if kw == "CMD"]
    assert json.loads(cmd) == ["gateway", "serve", "--host", "0.0.0.0"]

    # What the build copies exists, and .dockerignore (an allow list) lets it through.
    ignore = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert ignore[0] == "*"
    copied = [
        src
        for kw, rest in steps
        if kw == "COPY" and not rest.startswith("--from")
        for src in rest.split()[:-1]
    ]
    assert {"pyproject.toml", "requirements", "gateway", "publisher"} <= set(copied)
    for src in copied:
        assert (ROOT / src).exists(), src
        assert f"!{src}" in ignore or f"!{src}/" in ignore, src
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert {"gateway", "kev-publish"} <= set(scripts)


# -- docker-compose.yml --------------------------------------------------------------------------


#: every GATEWAY_* variable a setting reads: one per field, ``_FILE`` for the secret ones
_SETTING_NAMES = {f.env for f in FIELDS.values()} | {
    f"{ENV_PREFIX}{name.upper()}_FILE" for name in SECRET_FIELDS
}


def _stop_seconds(env: Mapping[str, str]) -> float:
    """The longest a replica with these settings takes to stop after SIGTERM: the drain, then
    uvicorn's graceful shutdown backstop for connections still open."""
    settings = Settings.load(env)
    return settings.server.drain_deadline + uvicorn_options(settings)["timeout_graceful_shutdown"]


def _settings_env(env: Mapping[str, Any]) -> dict[str, str]:
    """``env``'s GATEWAY_* variables, each checked to be a real setting (or a secret's
    ``_FILE``), and loadable; returned without the ``_FILE`` ones (the files exist in the
    container only)."""
    gateway_env = {k: str(v) for k, v in env.items() if k.startswith(ENV_PREFIX)}
    assert set(gateway_env) <= _SETTING_NAMES, set(gateway_env) - _SETTING_NAMES
    loadable = {k: v for k, v in gateway_env.items() if not k.endswith("_FILE")}
    Settings.load(loadable)  # every value valid, URLs included
    return loadable


def _mounts(service: Mapping[str, Any]) -> dict[str, str]:
    """container path -> host path of a service's bind mounts."""
    out = {}
    for volume in service.get("volumes", []):
        host, container, *_ = volume.split(":")
        out[container] = host
    return out


def test_compose_file() -> None:
    compose = yaml.safe_load(COMPOSE.read_text())
    services = compose["services"]
    assert {"redis", "seed", "publisher", "nginx", *GATEWAYS} <= set(services)
    assert services["redis"]["image"].startswith("redis:7")

    for name in GATEWAYS:
        gw = services[name]
        assert gw["build"]["dockerfile"] == "deploy/Dockerfile"
        assert (ROOT / gw["build"]["context"] / gw["build"]["dockerfile"]).is_file()
        env = _settings_env(gw["environment"])
        assert env["GATEWAY_REDIS_URL"] == "redis://kev-gateway@redis:6379/0"
        assert _seconds(gw["stop_grace_period"]) > _stop_seconds(env)
        assert any("/ready" in part for part in gw["healthcheck"]["test"])
        assert gw["depends_on"]["redis"]["condition"] == "service_healthy"

    publisher = services["publisher"]
    assert publisher["command"][:4] == ["kev-publish", "demo", "--rate", "5"]
    assert publisher["environment"]["KEV_REDIS_URL"] == "redis://kev-publisher@redis:6379/0"

    seed = services["seed"]
    assert seed["command"][:2] == ["gateway", "import"]
    assert _mounts(seed)[seed["command"][2]] == "./deploy/demo-identities.json"
    _settings_env(seed["environment"])

    nginx = services["nginx"]
    assert nginx["ports"] == ["127.0.0.1:8080:8080"]
    # The demo identities' keys are public: nothing is published beyond loopback.
    for name, service in services.items():
        for port in service.get("ports", []):
            host_ip = port.get("host_ip") if isinstance(port, dict) else str(port).split(":")[0]
            assert host_ip == "127.0.0.1", (name, port)
    assert _mounts(nginx) == {
        "/etc/nginx/nginx.conf": "./deploy/nginx/nginx.conf",
        "/etc/nginx/upstream.conf": "./deploy/nginx/upstream.compose.conf",
        "/etc/nginx/listen.conf": "./deploy/nginx/listen.compose.conf",
    }
    # Its prefix holds pid and temp dirs; the includes resolve next to nginx.conf.
    command = nginx["command"]
    assert command[command.index("-c") + 1] == "/etc/nginx/nginx.conf"
    assert "daemon off;" in command
    assert all(nginx["depends_on"][name]["condition"] == "service_healthy" for name in GATEWAYS)

    for service in services.values():
        for host in _mounts(service).values():
            assert (ROOT / host).is_file(), host
    for secret in compose.get("secrets", {}).values():
        assert (ROOT / secret["file"]).is_file(), secret


def test_demo_identities_file_matches_the_demo_publisher() -> None:
    doc = json.loads((DEPLOY / "demo-identities.json").read_text())
    ids = demo_identities()
    assert doc["users"] == [
        {"user_id": k.user_id, "role": k.role, "domain": k.domain, "password": k.secret_key}
        for k in ids.keypairs
    ]
    assert doc["keypairs"] == [
        {
            "access_key": k.access_key,
            "secret_key": k.secret_key,
            "user_id": k.user_id,
            "active": True,
        }
        for k in ids.keypairs
    ]
    assert doc["groups"] == [{"domain": g.domain, "name": g.name} for g in ids.groups]


def test_demo_identities_file_imports_with_the_seed_command(
    redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = str(DEPLOY / "demo-identities.json")
    assert gateway_main(["import", path, "--redis-url", redis_url]) == 0
    assert capsys.readouterr().out.strip() == "imported 6 users, 6 keypairs, 4 groups"


# -- Kubernetes ----------------------------------------------------------------------------------


def _manifests() -> dict[str, dict[str, Any]]:
    """kind -> manifest, one document per file, none with a namespace."""
    out: dict[str, dict[str, Any]] = {}
    for path in sorted(K8S.glob("*.yaml")):
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
        assert len(docs) == 1, path
        (doc,) = docs
        assert "namespace" not in doc.get("metadata", {}), path
        # by kind; the one second Secret (the Redis users') by kind/name
        key = doc["kind"]
        if f"{key}/{doc.get('metadata', {}).get('name')}" == REDIS_ACL_SECRET:
            key = REDIS_ACL_SECRET
        assert key not in out, path
        out[key] = doc | {"_file": path.name}
    return out


def test_kubernetes_manifests() -> None:
    m = _manifests()
    versions = {kind: doc["apiVersion"] for kind, doc in m.items()}
    assert versions == {
        "ConfigMap": "v1",
        "Secret": "v1",
        "Deployment": "apps/v1",
        "Service": "v1",
        "HorizontalPodAutoscaler": "autoscaling/v2",
        "PodDisruptionBudget": "policy/v1",
        "Kustomization": "kustomize.config.k8s.io/v1beta1",
        "Ingress": "networking.k8s.io/v1",
        "NetworkPolicy": "networking.k8s.io/v1",
        "ServiceMonitor": "monitoring.coreos.com/v1",
        "Job": "batch/v1",
        REDIS_ACL_SECRET: "v1",
    }
    # The Sentinel Secret is an example to edit, the Redis users' Secret holds demo passwords,
    # the ServiceMonitor needs the Prometheus Operator's CRD, and the import Job runs on
    # demand: none is applied by default.
    listed = set(m["Kustomization"]["resources"])
    assert listed == {doc["_file"] for doc in m.values()} - {
        "kustomization.yaml",
        m["Secret"]["_file"],
        m[REDIS_ACL_SECRET]["_file"],
        m["ServiceMonitor"]["_file"],
        m["Job"]["_file"],
    }

    config = _settings_env(m["ConfigMap"]["data"])
    assert config["GATEWAY_REDIS_URL"].startswith("redis+sentinel://")
    _settings_env(m["Secret"]["stringData"])

    deployment = m["Deployment"]
    assert deployment["spec"]["replicas"] == 3
    pod = deployment["spec"]["template"]
    labels = pod["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    spec = pod["spec"]
    assert spec["securityContext"]["runAsNonRoot"] is True
    (container,) = spec["containers"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/health"
    assert {"cpu", "memory"} <= set(container["resources"]["requests"])
    assert {"cpu", "memory"} <= set(container["resources"]["limits"])
    (port,) = container["ports"]
    assert port == {"name": "http", "containerPort": 8081, "protocol": "TCP"}
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["port"] in ("http", 8081)
    sources = container["envFrom"]
    assert sources[0]["configMapRef"]["name"] == m["ConfigMap"]["metadata"]["name"]
    assert sources[1]["secretRef"] == {"name": m["Secret"]["metadata"]["name"], "optional": True}
    _settings_env({e["name"]: "x" for e in container["env"] if e["name"] != "GATEWAY_REPLICA"})
    assert {e["name"] for e in container["env"]} <= _SETTING_NAMES
    # preStop sleep + drain + shutdown must end before the kubelet's SIGKILL.
    pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    assert spec["terminationGracePeriodSeconds"] > float(pre_stop[1]) + _stop_seconds(config)

    service = m["Service"]["spec"]
    assert service["type"] == "ClusterIP"
    assert service.get("sessionAffinity", "None") == "None"
    assert service["selector"].items() <= labels.items()
    assert service["ports"] == [
        {"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}
    ]

    hpa = m["HorizontalPodAutoscaler"]["spec"]
    assert hpa["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": deployment["metadata"]["name"],
    }
    assert hpa["minReplicas"] >= 2 and hpa["maxReplicas"] > hpa["minReplicas"]

    pdb = m["PodDisruptionBudget"]["spec"]
    assert pdb.get("maxUnavailable") == 1 or pdb.get("minAvailable") == 2
    assert pdb["selector"]["matchLabels"].items() <= labels.items()


def _k8s_context() -> tuple[dict[str, dict[str, Any]], Settings]:
    m = _manifests()
    return m, Settings.load(_settings_env(m["ConfigMap"]["data"]))


def _trusted(env: Mapping[str, Any]) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    trusted = Settings.load(_settings_env(env)).browser.trusted_proxies
    assert trusted, "trusted_proxies unset: every login would count against the proxy"
    return [ipaddress.ip_network(n, strict=False) for n in trusted]


def _in(address: str, networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> bool:
    return any(ipaddress.ip_address(address) in n for n in networks)


def test_every_shipped_deployment_trusts_its_load_balancer_and_nothing_else() -> None:
    """So the login throttle counts clients, not the proxy (issue 22: 26 failed logins
    through the shipped nginx locked every user out)."""
    # the proxies name the client in X-Forwarded-For
    nginx = " ".join(_nginx_text(NGINX_CONF).split())
    assert "proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;" in nginx
    assert re.search(r"(?m)^\s*option forwardfor\b", HAPROXY_CFG.read_text())

    # compose: nginx and haproxy at fixed addresses, trusted; every other container's
    # address comes from ip_range, which no trusted network overlaps
    compose = yaml.safe_load(COMPOSE.read_text())
    services = compose["services"]
    (pool,) = compose["networks"]["default"]["ipam"]["config"]
    subnet, dynamic = ipaddress.ip_network(pool["subnet"]), ipaddress.ip_network(pool["ip_range"])
    trusted = _trusted(services[GATEWAYS[0]]["environment"])
    for name in GATEWAYS:
        assert _trusted(services[name]["environment"]) == trusted, name
    for name in ("nginx", "haproxy"):
        address = services[name]["networks"]["default"]["ipv4_address"]
        assert _in(address, trusted) and ipaddress.ip_address(address) in subnet, name
        assert ipaddress.ip_address(address) not in dynamic, name
    assert not any(n.overlaps(dynamic) for n in trusted), trusted
    static = {
        s["networks"]["default"]["ipv4_address"]
        for s in services.values()
        if isinstance(s.get("networks"), dict)
    }
    assert static == {
        services[name]["networks"]["default"]["ipv4_address"] for name in ("nginx", "haproxy")
    }

    # Kubernetes: the ingress controller's pods (a pod network, never a public address)
    networks = _trusted(_manifests()["ConfigMap"]["data"])
    assert all(n.is_private for n in networks), networks

    # the local cluster: its nginx, on loopback
    cluster = LocalCluster(replicas=1, nginx=True)
    try:
        cluster.use_nginx = True  # as where nginx is installed
        settings = cluster.replica_settings(8081, "redis://127.0.0.1:1/0")
        assert settings.browser.trusted_proxies == (NGINX_ADDRESS,)
        cluster.use_nginx = False  # no nginx: the replica is the front door, trusts no one
        assert cluster.replica_settings(8081, "redis://127.0.0.1:1/0").browser.trusted_proxies == ()
    finally:
        cluster.stop()


def test_kubernetes_autoscaling_counts_streams_and_streams_rebalance() -> None:
    """The HPA scales on streams per pod (``kev_clients``, which /metrics exports: see
    test_the_autoscaling_metric_is_exported) and CPU; streams of resuming clients have a
    lifetime, so they spread onto the pods a scale-out adds."""
    m, settings = _k8s_context()
    metrics = m["HorizontalPodAutoscaler"]["spec"]["metrics"]
    pods = [x["pods"] for x in metrics if x["type"] == "Pods"]
    assert [p["metric"]["name"] for p in pods] == [AUTOSCALING_METRIC]
    target = pods[0]["target"]
    assert target["type"] == "AverageValue"
    assert 0 < float(target["averageValue"]) < settings.limits.max_streams  # before 503s start
    resources = [x["resource"]["name"] for x in metrics if x["type"] == "Resource"]
    assert resources == ["cpu"]
    # a lifetime long enough not to churn, short enough to rebalance within the hour
    assert 300 <= settings.fanout.stream_max_lifetime <= 3600


def test_kubernetes_ingress_is_sse_safe_and_routes_only_public_paths() -> None:
    m, settings = _k8s_context()
    ingress = m["Ingress"]
    notes = ingress["metadata"]["annotations"]
    prefix = "nginx.ingress.kubernetes.io/"
    assert notes[prefix + "proxy-buffering"] == "off"
    assert notes[prefix + "proxy-request-buffering"] == "off"
    assert notes[prefix + "proxy-http-version"] == "1.1"
    for name in ("proxy-read-timeout", "proxy-send-timeout"):
        # nginx's timeouts run between two reads/writes: pings must come well within them
        assert int(notes[prefix + name]) >= max(3600, 3 * settings.fanout.ping_interval), name
    assert int(notes[prefix + "proxy-connect-timeout"]) <= 5
    assert "http_503" in notes[prefix + "proxy-next-upstream"]  # a draining pod is skipped
    # The signature covers the target and Host as sent; no stickiness is needed.
    for changes in ("rewrite-target", "upstream-vhost", "affinity", "use-regex"):
        assert prefix + changes not in notes, changes
    assert ingress["spec"]["ingressClassName"] == "nginx"

    service = m["Service"]
    app = create_app(settings)
    routes = {route.path for route in app.app.routes}  # type: ignore[attr-defined]
    paths = [p for rule in ingress["spec"]["rules"] for p in rule["http"]["paths"]]
    for path in paths:
        backend = path["backend"]["service"]
        assert backend["name"] == service["metadata"]["name"]
        assert backend["port"] == {"name": service["spec"]["ports"][0]["name"]}
        assert path["pathType"] in ("Exact", "Prefix")
        under = [r for r in routes if r == path["path"] or (
            path["pathType"] == "Prefix" and r.startswith(path["path"]))]  # fmt: skip
        assert under, f"{path['path']} routes to nothing the gateway serves"
    exposed = {r for r in routes for p in paths if r == p["path"] or (
        p["pathType"] == "Prefix" and r.startswith(p["path"]))}  # fmt: skip
    assert set(STREAM_PATHS) <= exposed
    assert not exposed & {"/metrics", "/health", "/ready"}
    assert ingress["spec"]["tls"][0]["hosts"] == [ingress["spec"]["rules"][0]["host"]]
    assert settings.browser.cookie_secure  # TLS terminates at the ingress


def test_kubernetes_network_policy_and_scraping() -> None:
    m, settings = _k8s_context()
    labels = m["Deployment"]["spec"]["template"]["metadata"]["labels"]
    (port,) = m["Deployment"]["spec"]["template"]["spec"]["containers"][0]["ports"]
    policy = m["NetworkPolicy"]["spec"]
    assert policy["podSelector"]["matchLabels"].items() <= labels.items()
    assert set(policy["policyTypes"]) == {"Ingress", "Egress"}
    sources = {}
    for rule in policy["ingress"]:
        assert rule.get("from"), "a rule without `from` admits everyone"
        assert [p["port"] for p in rule["ports"]] in ([port["name"]], [port["containerPort"]])
        for peer in rule["from"]:
            namespace = peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
            sources[namespace] = peer.get("podSelector")
    assert set(sources) == {"ingress-nginx", "monitoring"}
    assert sources["ingress-nginx"] is not None  # the controller, not its whole namespace
    egress_ports = {p["port"] for rule in policy["egress"] for p in rule["ports"]}
    # Redis, its Sentinels (the ConfigMap's URL), and DNS
    assert {6379, 26379, 53} <= egress_ports
    sentinel_ports = {
        int(hostport.rsplit(":", 1)[1])
        for hostport in settings.redis.url.split("://", 1)[1].split("/", 1)[0].split(",")
    }
    assert sentinel_ports <= egress_ports
    assert all(rule.get("to") for rule in policy["egress"])

    monitor = m["ServiceMonitor"]["spec"]
    service = m["Service"]
    assert monitor["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    (endpoint,) = monitor["endpoints"]
    assert endpoint["port"] == service["spec"]["ports"][0]["name"]
    assert endpoint["path"] == "/metrics"
    annotations = m["Deployment"]["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(port["containerPort"])
    assert annotations["prometheus.io/path"] == "/metrics"


def test_the_autoscaling_metric_is_exported(gateway: RunningGateway) -> None:
    """What the HPA scales on is a real gauge of this gateway's /metrics."""
    text = httpx.get(gateway.base_url + "/metrics", timeout=10).text
    assert re.search(rf"^# TYPE {AUTOSCALING_METRIC} gauge$", text, re.M)
    assert re.search(rf"^{AUTOSCALING_METRIC} 0(\.0)?$", text, re.M)


# -- Redis ACL users (deploy/redis/) -------------------------------------------------------------


def test_shipped_users_acl_is_what_gateway_acl_makes_of_the_demo_passwords(
    tmp_path: Path,
) -> None:
    """users.acl cannot drift from the password files, the ACL table or the k8s Secret."""
    out = tmp_path / "users.acl"
    args = ["acl", "-o", str(out)]
    files = {str(k): v for k, v in [*DEMO_PASSWORDS.items(), *DEMO_SERVICE_PASSWORDS.items()]}
    files["superuser"] = DEMO_SUPERUSER
    for role, path in files.items():
        args += [f"--{role}-password-file", str(path)]
    assert gateway_main(args) == 0
    assert ACLFILE.read_text() == out.read_text()
    passwords = {role: path.read_text().rstrip("\n") for role, path in files.items()}
    assert all("demo" in pw for pw in passwords.values())  # marked, in every place it shows
    assert len(set(passwords.values())) == len(passwords)
    assert not any(pw in out.read_text() for pw in passwords.values())  # hashes only

    secret = _manifests()[REDIS_ACL_SECRET]
    data = secret["stringData"]
    assert data["users.acl"] == ACLFILE.read_text()
    assert {key: data[f"{key}.password"] for key in passwords} == passwords
    # what a node includes to replicate as the replication user (redis-sentinel.yaml)
    assert data["replication.conf"].splitlines() == [
        "masteruser kev-replication",
        f"masterauth {passwords['replication']}",
    ]
    assert "DEMO ONLY" in (K8S / secret["_file"]).read_text()


def test_every_compose_service_uses_its_own_redis_user() -> None:
    doc = compose()
    args, mounts = redis_command(doc)
    aclfile = args[args.index("--aclfile") + 1]
    assert mounts[aclfile] == ACLFILE
    flags = " ".join(args)
    assert "--appendonly yes" in flags and "--appendfsync everysec" in flags  # AOF kept

    url_vars = {"GATEWAY_REDIS_URL", "KEV_REDIS_URL"}
    talking = {
        n for n, spec in doc["services"].items() if url_vars & set(spec.get("environment", {}))
    }
    assert talking == set(ROLE_OF_SERVICE)
    for service, role in ROLE_OF_SERVICE.items():
        client = redis_client_of(doc, service)
        assert client.username == f"kev-{role}", service
        assert urlsplit(client.url).password is None, service  # from the file only
        assert client.password_file == DEMO_PASSWORDS[role], service


def test_kubernetes_gateway_uses_its_redis_user_and_only_its_password() -> None:
    m = _manifests()
    url = m["ConfigMap"]["data"]["GATEWAY_REDIS_URL"]
    target = parse_sentinel(url)
    assert (target.username, target.password) == ("kev-gateway", None)
    pod = m["Deployment"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    path = Path(env["GATEWAY_REDIS_PASSWORD_FILE"])
    (mount,) = [v for v in container["volumeMounts"] if v["mountPath"] == str(path.parent)]
    assert mount["readOnly"] is True
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    assert volume["secret"]["secretName"] == m[REDIS_ACL_SECRET]["metadata"]["name"]
    # the gateway pod gets its own password, not the others' nor the aclfile
    assert volume["secret"]["items"] == [{"key": "gateway.password", "path": path.name}]


def test_kubernetes_import_job_runs_as_the_admin_user_with_only_its_password() -> None:
    m = _manifests()
    pod = m["Job"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["command"][:2] == ["gateway", "import"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    _settings_env(env)
    target = parse_sentinel(env["GATEWAY_REDIS_URL"])
    assert (target.username, target.password) == ("kev-admin", None)
    gateway_url = parse_sentinel(m["ConfigMap"]["data"]["GATEWAY_REDIS_URL"])
    assert (target.sentinels, target.service) == (gateway_url.sentinels, gateway_url.service)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {v["mountPath"]: v["name"] for v in container["volumeMounts"]}
    password = Path(env["GATEWAY_REDIS_PASSWORD_FILE"])
    secret = volumes[mounts[str(password.parent)]]["secret"]
    assert secret["secretName"] == m[REDIS_ACL_SECRET]["metadata"]["name"]
    assert secret["items"] == [{"key": "admin.password", "path": password.name}]
    # the identities (secret keys) come from a Secret too
    identities = Path(container["command"][2])
    assert "secret" in volumes[mounts[str(identities.parent)]]


# -- the bridge (gateway bridge) ------------------------------------------------------------------


def _bridge_env(env: Mapping[str, Any]) -> BridgeSettings:
    """``env`` checked as ``gateway bridge`` reads it: every GATEWAY_* variable a bridge
    setting (or a secret's ``_FILE``), the rest loadable; the sources' secrets stand in."""
    names = {f.env for f in BridgeSettings.FIELDS.values()}
    secrets = {f.env for f in BridgeSettings.FIELDS.values() if f.secret}
    # compose's ${VAR:-default}: as a machine without VAR set sees it
    gateway_env = {
        k: re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", str(v))
        for k, v in env.items()
        if k.startswith(ENV_PREFIX)
    }
    unknown = {k for k in gateway_env if k not in names and k.removesuffix("_FILE") not in secrets}
    assert not unknown, unknown
    loadable = {k: v for k, v in gateway_env.items() if not k.endswith("_FILE")}
    loadable.setdefault("GATEWAY_BRIDGE_FROM_REDIS", "redis://backendai:6379/4")
    loadable.setdefault("GATEWAY_BRIDGE_FROM_DB", "postgresql://kev_bridge@backendai/backend")
    return BridgeSettings.load(loadable)


def test_compose_runs_two_bridges_with_their_own_redis_user_only_on_request() -> None:
    services = compose()["services"]
    bridges = {
        n: s for n, s in services.items() if s.get("command", [])[:2] == ["gateway", "bridge"]
    }
    assert set(bridges) == {n for n, role in ROLE_OF_SERVICE.items() if role == "bridge"}
    assert len(bridges) == 2  # one active, one standby
    for name, service in bridges.items():
        assert service["profiles"] == ["backendai"], name  # not in a plain `compose up`
        settings = _bridge_env(service["environment"])
        assert settings.bridge.host == "0.0.0.0"
        assert any(f":{settings.bridge.port}/ready" in p for p in service["healthcheck"]["test"])
        assert _seconds(service["stop_grace_period"]) > 5  # gives its lease up before SIGKILL


def test_kubernetes_bridge_deployment() -> None:
    bridge_dir = K8S / "bridge"
    docs = {}
    for path in sorted(bridge_dir.glob("*.yaml")):
        (doc,) = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
        assert "namespace" not in doc.get("metadata", {}), path
        docs[doc["kind"]] = doc | {"_file": path.name}
    assert set(docs["Kustomization"]["resources"]) == {
        d["_file"] for k, d in docs.items() if k != "Kustomization"
    }
    deployment = docs["Deployment"]
    assert deployment["spec"]["replicas"] == 2
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["command"] == ["gateway", "bridge"]
    env = {e["name"]: e["value"] for e in container["env"]}
    settings = _bridge_env(env)
    target = parse_sentinel(env["GATEWAY_REDIS_URL"])
    assert (target.username, target.password) == ("kev-bridge", None)
    (port,) = container["ports"]
    assert port["containerPort"] == settings.bridge.port
    assert deployment["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"] == str(
        settings.bridge.port
    )
    assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/health"
    assert pod["terminationGracePeriodSeconds"] > 5
    # its Redis password only, from the users' Secret; the sources from their own Secret
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    password = Path(env["GATEWAY_REDIS_PASSWORD_FILE"])
    secret = volumes[mounts[str(password.parent)]["name"]]["secret"]
    assert secret["secretName"] == _manifests()[REDIS_ACL_SECRET]["metadata"]["name"]
    assert secret["items"] == [{"key": "bridge.password", "path": password.name}]
    for var in ("GATEWAY_BRIDGE_FROM_REDIS_FILE", "GATEWAY_BRIDGE_FROM_DB_FILE"):
        mount = mounts[str(Path(env[var]).parent)]
        assert mount["readOnly"] is True
        assert volumes[mount["name"]]["secret"]["secretName"] == "kev-bridge-source"
    assert docs["NetworkPolicy"]["spec"]["podSelector"] == deployment["spec"]["selector"]
