"""docker-compose.yml and the local launcher describe the same stack."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import yaml

from deploy.topology import COMPOSE_FILE, ROOT, load_compose, local_services, write_localised_files
from tests.conftest import need_binary

COMPOSE = load_compose()
SERVICES = COMPOSE["services"]


def test_compose_file_is_valid_for_docker_compose():
    binary = need_binary("docker-compose")
    result = subprocess.run(
        [binary, "-f", str(COMPOSE_FILE), "config", "-q"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr


def test_every_compose_service_is_in_the_local_plan_with_the_same_ports():
    plan = {s.name: s for s in local_services(redis=True)}
    assert list(plan) == list(SERVICES)
    for name, spec in SERVICES.items():
        published = [int(str(p).split(":")[0]) for p in spec.get("ports", [])]
        assert plan[name].ports == published, name


def test_local_commands_are_the_compose_commands_with_loopback_addresses():
    names = set(SERVICES)
    alternatives = "|".join(names)
    container_host = re.compile(rf"(?<![\w.-])({alternatives}):\d|//({alternatives})\b")
    for service in local_services(redis=True):
        compose_cmd = [str(a) for a in SERVICES[service.name].get("command", [])]
        local = service.argv[-len(compose_cmd) :] if compose_cmd else []
        assert len(local) == len(compose_cmd), service.name
        if compose_cmd and compose_cmd[0] == "python":
            assert local[0] == sys.executable  # the venv's interpreter runs our modules
        for ours, theirs in zip(local[1:], compose_cmd[1:], strict=True):
            if ours != theirs:  # only addresses and mounted paths may differ
                assert "0.0.0.0" in theirs or "/" in theirs, (service.name, ours, theirs)
        for value in [*service.argv, *service.env.values()]:
            assert not container_host.search(value), (service.name, value)
            assert "0.0.0.0" not in value, (service.name, value)


def test_every_service_of_ours_has_a_dockerfile_with_only_its_extra():
    for name, spec in SERVICES.items():
        if "build" not in spec:
            continue
        dockerfile = ROOT / spec["build"]["dockerfile"]
        text = dockerfile.read_text()
        extra = dockerfile.name.split(".")[0]
        assert f'".[{extra}]"' in text, dockerfile
        assert re.search(r"^USER (?!root)\w+", text, re.M), f"{dockerfile} must run as non-root"
        assert text.count("FROM ") >= 2, f"{dockerfile} must be multi-stage"
        module = spec["command"][2]
        assert module.startswith(f"services.{extra}"), (name, module)


def test_every_service_has_a_healthcheck_on_its_published_port():
    for name, spec in SERVICES.items():
        if name == "grafana":
            continue
        test = " ".join(map(str, spec["healthcheck"]["test"]))
        ports = re.findall(r"127\.0\.0\.1:(\d+)", test)
        published = [str(p).split(":")[1] for p in spec.get("ports", [])]
        assert set(ports) <= set(published), (name, ports, published)


def test_prometheus_scrapes_every_http_service_of_the_stack():
    config = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    targets = {t for job in config["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]}
    for name, spec in SERVICES.items():
        if spec.get("healthcheck") and re.search(
            r"/(healthz|readyz)\b", " ".join(map(str, spec["healthcheck"]["test"]))
        ):
            first_port = str(spec["ports"][0]).split(":")[1]
            assert f"{name}:{first_port}" in targets, name
    for target in targets:
        host, port = target.split(":")
        assert host in SERVICES, target
        assert any(str(p).endswith(f":{port}") for p in SERVICES[host]["ports"]), target


def test_port_offset_moves_every_address_consistently(tmp_path: Path):
    plan = {s.name: s for s in local_services(redis=True, port_offset=100, var_dir=tmp_path)}
    crawler = plan["crawler"]
    assert crawler.ports == [8181]
    assert "127.0.0.1:18190" in crawler.env["PG_CRAWLER_RESOLVE"]  # websim, through the fault proxy
    assert all(str(v).startswith(str(tmp_path)) for k, v in crawler.env.items() if k.endswith("DATA_DIR"))


PROXIES = json.loads((ROOT / "deploy/toxiproxy/proxies.json").read_text())


def test_every_hop_between_services_passes_through_the_fault_proxy():
    """A service reaches another only at toxiproxy:PORT, and each such port is a proxy of the config."""
    names = set(SERVICES) - {"toxiproxy"}
    listen_ports = {int(p["listen"].rsplit(":", 1)[1]) for p in PROXIES}
    direct = re.compile(rf"(?<![\w.-])({'|'.join(names)}):\d|//({'|'.join(names)})\b")
    for name, spec in SERVICES.items():
        env = {**(spec.get("environment") or {}), **spec.get("x-local", {}).get("embedded-env", {})}
        for key, value in env.items():
            assert not direct.search(str(value)), (name, key, value)
            for port in re.findall(r"toxiproxy:(\d+)", str(value)):
                assert int(port) in listen_ports, (name, key, value)
    hops = (("crawler", "crawler_websim"), ("crawler", "crawler_redis"), ("dedup", "dedup_redis"))
    for service, hop in hops:
        assert "toxiproxy" in SERVICES[service]["depends_on"], service
        assert hop in {p["name"] for p in PROXIES}


def test_each_proxy_listens_on_a_published_port_and_points_at_a_service_port():
    published = {int(str(p).split(":")[0]) for p in SERVICES["toxiproxy"]["ports"]}
    assert 8474 in published  # the API
    for proxy in PROXIES:
        assert set(proxy) >= {"name", "listen", "upstream"}, proxy
        assert int(proxy["listen"].rsplit(":", 1)[1]) in published, proxy
        host, port = proxy["upstream"].split(":")
        assert host in SERVICES, proxy
        assert any(str(p).endswith(f":{port}") for p in SERVICES[host]["ports"]), proxy
    hops = {p["upstream"].split(":")[0] for p in PROXIES}
    assert hops == {"websim", "redis", "dedup", "inference"}


def test_the_local_fault_proxy_gets_the_same_config_localised(tmp_path: Path):
    plan = {s.name: s for s in local_services(port_offset=100, var_dir=tmp_path)}
    proxy = plan["toxiproxy"]
    assert proxy.skip is None and proxy.argv[1:3] == ["-m", "deploy.faultproxy"]
    assert proxy.ports[0] == 8574 and proxy.health_path is None  # TCP check, as on the image
    write_localised_files(proxy, set(SERVICES))
    (config_file,) = proxy.files.values()
    assert str(config_file) in proxy.argv
    local = {p["name"]: p for p in json.loads(config_file.read_text())}
    assert local["crawler_websim"]["listen"] == "127.0.0.1:18190"
    assert local["crawler_websim"]["upstream"] == "127.0.0.1:8190"
    assert local["inference"]["upstream"] == "127.0.0.1:8100"


def test_direct_bypasses_the_fault_proxy(tmp_path: Path):
    plan = {s.name: s for s in local_services(redis=True, direct=True, var_dir=tmp_path)}
    assert plan["toxiproxy"].skip
    assert plan["crawler"].env["PG_CRAWLER_RESOLVE"] == "*.sim.test=127.0.0.1:8090"
    assert plan["crawler"].env["PG_CRAWLER_PAGES_TO"] == "redis://127.0.0.1:6379/0"
    assert plan["dedup"].env["PG_DEDUP_REDIS"] == "redis://127.0.0.1:6379/0"
    embedded = {s.name: s for s in local_services(direct=True, var_dir=tmp_path)}
    assert embedded["crawler"].env["PG_CRAWLER_PAGES_TO"] == "http://127.0.0.1:8082/v1/pages"
