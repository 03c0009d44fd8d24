"""docker-compose.yml and the local launcher describe the same stack."""

from __future__ import annotations

import itertools
import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from deploy.topology import (
    COMPOSE_FILE,
    ROOT,
    load_compose,
    local_services,
    localise_replica_discovery,
    parse_port,
    write_localised_files,
)
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
        published = [parse_port(p)[1] for p in spec.get("ports", [])]
        assert plan[name].ports == published, name


def test_compose_ports_parse_in_every_form():
    assert parse_port("8081:8081") == (None, 8081, 8081)
    assert parse_port("127.0.0.1:6379:6379") == ("127.0.0.1", 6379, 6379)
    assert parse_port("127.0.0.1:16379:6379/tcp") == ("127.0.0.1", 16379, 6379)
    assert parse_port("9090") == (None, 9090, 9090)
    assert parse_port({"target": 80, "published": 8080, "host_ip": "127.0.0.1"}) == ("127.0.0.1", 8080, 80)
    with pytest.raises(ValueError, match="ports"):
        parse_port("9101-9103:9101")
    # Redis is published on the host's loopback only; locally it listens on its compose port.
    assert SERVICES["redis"]["ports"] == ["127.0.0.1:6379:6379"]
    assert next(s for s in local_services(redis=True) if s.name == "redis").ports == [6379]


def test_workers_run_the_compose_worker_command_once_per_replica(tmp_path: Path):
    """`make run WORKERS=3` and compose's crawler-worker replicas run the same command."""
    spec = SERVICES["crawler-worker"]
    assert spec["deploy"]["replicas"] == 3 and "ports" not in spec  # replicas cannot share a host port
    assert spec["command"][:4] == ["python", "-m", "services.crawler", "worker"]
    alone = {s.name: s for s in local_services(redis=True, var_dir=tmp_path)}
    assert alone["crawler-worker"].skip and alone["crawler"].env["PG_CRAWLER_REDIS"] == ""
    plan = local_services(workers=3, port_offset=100, var_dir=tmp_path)
    by_name = {s.name: s for s in plan}
    assert by_name["redis"].skip is None  # WORKERS implies REDIS
    assert by_name["crawler"].env["PG_CRAWLER_REDIS"] == "redis://127.0.0.1:16479/0"  # via the proxy
    workers = [s for s in plan if s.group == "crawler-worker"]
    assert [w.name for w in workers] == ["crawler-worker-1", "crawler-worker-2", "crawler-worker-3"]
    names = [s.name for s in plan]
    assert names.index("crawler") < names.index("crawler-worker-1")  # compose order, replicas in place
    compose_cmd = [str(a) for a in spec["command"]]
    extra = [str(a) for a in spec["x-local"]["replica-args"]]
    for i, worker in enumerate(workers):
        assert worker.skip is None
        assert worker.ports == [9101 + i + 100] and worker.health_path == "/metrics"
        args = worker.argv[1:]
        flag = {a: v for a, v in itertools.pairwise(args) if a.startswith("--")}
        assert flag["--worker-id"] == worker.name
        assert flag["--metrics-port"] == str(9101 + i + 100)
        assert flag["--redis"] == flag["--pages-to"] == "redis://127.0.0.1:16479/0"  # crawler_redis hop
        assert flag["--resolve"] == "*.sim.test=127.0.0.1:18190"  # crawler_websim hop
        assert flag["--data-dir"] == str(tmp_path / worker.name / "data")
        assert len(args) == len(compose_cmd) - 1 + len(extra)
        for ours, theirs in zip(args, [*compose_cmd[1:], *extra], strict=True):
            if ours != theirs:  # only addresses, ports, paths and the replica's name may differ
                may_differ = r"0\.0\.0\.0|/|toxiproxy:|9101|\{replica\}"
                assert re.search(may_differ, theirs), (worker.name, ours, theirs)
    direct = {s.name: s for s in local_services(workers=2, direct=True, var_dir=tmp_path)}
    args = direct["crawler-worker-2"].argv
    assert args[args.index("--resolve") + 1] == "*.sim.test=127.0.0.1:8090"
    assert args[args.index("--redis") + 1] == "redis://127.0.0.1:6379/0"


def test_prometheus_finds_every_worker_replica():
    config = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "crawler-worker"]
    (sd,) = job["dns_sd_configs"]
    assert sd["names"] == ["crawler-worker"] and sd["type"] == "A"
    assert str(sd["port"]) in map(str, SERVICES["crawler-worker"]["expose"])
    text = (ROOT / "deploy/prometheus/prometheus.yml").read_text()
    local = yaml.safe_load(localise_replica_discovery(text, {"crawler-worker": [9101, 9102]}))
    (job,) = [j for j in local["scrape_configs"] if j["job_name"] == "crawler-worker"]
    assert job["static_configs"] == [{"targets": ["127.0.0.1:9101", "127.0.0.1:9102"]}]
    none = yaml.safe_load(localise_replica_discovery(text, {"crawler-worker": []}))
    assert "crawler-worker" not in {j["job_name"] for j in none["scrape_configs"]}


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
                assert "0.0.0.0" in theirs or "/" in theirs or container_host.search(theirs), (
                    service.name,
                    ours,
                    theirs,
                )
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
        extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
        if extra in extras:
            assert f'".[{extra}]"' in text, dockerfile
        else:  # a service that needs only the base dependencies (websim): no extra at all
            assert re.search(r"^RUN pip install \.$", text, re.M), dockerfile
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
        published = [str(parse_port(p)[2]) for p in spec.get("ports", [])]
        published += [str(p) for p in spec.get("expose", [])]  # replicas: on the compose network
        assert set(ports) <= set(published), (name, ports, published)


def test_prometheus_scrapes_every_http_service_of_the_stack():
    config = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    jobs = config["scrape_configs"]
    targets = {t for job in jobs for sc in job.get("static_configs", []) for t in sc["targets"]}
    discovered = {n for job in jobs for sd in job.get("dns_sd_configs", []) for n in sd["names"]}
    assert discovered <= {n for n, spec in SERVICES.items() if "replicas" in spec.get("deploy", {})}
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
        env.update({f"command[{i}]": a for i, a in enumerate(spec.get("command", []))})
        for key, value in env.items():
            assert not direct.search(str(value)), (name, key, value)
            for port in re.findall(r"toxiproxy:(\d+)", str(value)):
                assert int(port) in listen_ports, (name, key, value)
    hops = (
        ("crawler", "crawler_websim"),
        ("crawler", "crawler_redis"),
        ("dedup", "dedup_redis"),
        ("crawler-worker", "crawler_websim"),
        ("crawler-worker", "crawler_redis"),
    )
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
