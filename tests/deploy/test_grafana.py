"""Grafana provisioning is complete and the committed dashboards are the generated ones."""

from __future__ import annotations

import json

import yaml

from deploy.grafana import build
from deploy.topology import ROOT, load_compose

GRAFANA = ROOT / "deploy" / "grafana"


def test_committed_dashboards_equal_the_generator_output():
    rendered = build.render()
    on_disk = {p.name: p.read_text() for p in (GRAFANA / "dashboards").glob("*.json")}
    assert on_disk == rendered, "run `python -m deploy.grafana.build` and commit the result"


def test_every_panel_queries_the_provisioned_prometheus():
    datasource = yaml.safe_load((GRAFANA / "provisioning/datasources/prometheus.yml").read_text())
    (source,) = datasource["datasources"]
    assert source["url"] == "http://prometheus:9090"
    assert "prometheus" in load_compose()["services"]
    for path in (GRAFANA / "dashboards").glob("*.json"):
        board = json.loads(path.read_text())
        assert board["panels"], path
        for panel in board["panels"]:
            assert panel["datasource"]["uid"] == source["uid"]
            assert all(t["expr"] for t in panel["targets"]), (path.name, panel["title"])


def test_compose_mounts_the_provisioning_where_grafana_reads_it():
    volumes = load_compose()["services"]["grafana"]["volumes"]
    assert "./deploy/grafana/provisioning:/etc/grafana/provisioning:ro" in volumes
    provider = yaml.safe_load((GRAFANA / "provisioning/dashboards/dashboards.yml").read_text())
    path = provider["providers"][0]["options"]["path"]
    assert any(v.startswith("./deploy/grafana/dashboards:" + path) for v in volumes)
