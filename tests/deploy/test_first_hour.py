"""What a new user meets in the first hour: the launcher's banner links work, the compose file
runs containers the way the docs say (build context, CPU limits, readiness, loopback Redis)."""

from __future__ import annotations

import fnmatch
import re
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import psutil
from fastapi.testclient import TestClient

from deploy.topology import ROOT, load_compose, local_services
from libs.service.settings import parse_settings
from services.inference.settings import InferenceSettings
from tests.conftest import free_port, need_binary, wait_for_port
from tests.libs.service.test_docs_offline import check_docs_offline


def test_banner_prometheus_links_answer_200(tmp_path: Path):
    need_binary("prometheus")
    offset = free_port() - 9090
    args = ["--only", "prometheus", "--port-offset", str(offset), "--var-dir", str(tmp_path)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "deploy.launch", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        lines = []
        for _ in range(200):  # bounded: the launcher prints a handful of lines
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if "stack up" in line:
                break
        banner = next((ln for ln in lines if ln.split()[:1] == ["prometheus"] and "http" in ln), None)
        assert banner is not None, "".join(lines)
        urls = re.findall(r"http://\S+?(?=[\s,)]|$)", banner)
        assert any(u.endswith("/targets") for u in urls) and any(u.endswith("/alerts") for u in urls)
        for url in urls:
            with urllib.request.urlopen(url, timeout=10) as resp:
                assert resp.status == 200, url
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


COMPOSE = load_compose()
SERVICES = COMPOSE["services"]


def _dockerignore() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [ln.strip().rstrip("/") for ln in lines if ln.strip() and not ln.startswith("#")]


def _ignored(path: str, patterns: list[str]) -> bool:
    parts = path.split("/")
    for pattern in patterns:
        bare = pattern.removeprefix("**/")
        if fnmatch.fnmatch(path, pattern) or any(fnmatch.fnmatch(p, bare) for p in parts):
            return True
        if any(fnmatch.fnmatch("/".join(parts[: i + 1]), pattern) for i in range(len(parts))):
            return True
    return False


def test_dockerignore_keeps_the_venv_and_caches_out_but_not_what_images_copy():
    patterns = _dockerignore()
    for heavy in (".venv", ".git", "reports", "var", "libs/__pycache__", "services/dedup/__pycache__"):
        assert _ignored(heavy, patterns), heavy
    for dockerfile in sorted((ROOT / "deploy" / "docker").glob("*.Dockerfile")):
        for line in dockerfile.read_text().splitlines():
            if line.startswith("COPY ") and "--from" not in line:
                for source in line.split()[1:-1]:
                    assert not _ignored(source.rstrip("/"), patterns), (dockerfile.name, source)
                    assert (ROOT / source).exists(), (dockerfile.name, source)


def test_health_checks_gate_on_readiness():
    for name, spec in SERVICES.items():
        test = " ".join(map(str, spec.get("healthcheck", {}).get("test", [])))
        # A crawler worker has no HTTP API: it serves /metrics only once Redis has answered.
        if "http://" in test and name not in ("prometheus", "crawler-worker"):
            assert "/readyz" in test and "/healthz" not in test, name


def test_inference_torch_threads_match_its_cpu_limit():
    spec = SERVICES["inference"]
    cpus = float(spec["deploy"]["resources"]["limits"]["cpus"])
    env = {k: str(v) for k, v in spec["environment"].items()}
    assert cpus.is_integer(), "a fractional CPU limit has no matching thread count"
    assert int(env["OMP_NUM_THREADS"]) == int(cpus)
    settings = parse_settings(InferenceSettings, [], env_prefix="PG_INFERENCE_", env=env)
    assert settings.torch_threads == int(cpus)


def test_local_redis_binds_loopback_only(tmp_path: Path):
    plan = {s.name: s for s in local_services(redis=True, var_dir=tmp_path)}
    argv = plan["redis"].argv
    assert argv[argv.index("--bind") + 1] == "127.0.0.1", argv
    redis_server = need_binary("redis-server")
    for _, local in plan["redis"].paths:  # as the launcher does before it starts a service
        local.mkdir(parents=True, exist_ok=True)
    port = free_port()
    argv = [redis_server, *argv[1:]]
    argv[argv.index("--port") + 1] = str(port)
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, cwd=tmp_path)
    try:
        wait_for_port(port, timeout=30)
        assert proc.poll() is None
        listening = {
            c.laddr.ip
            for c in psutil.Process(proc.pid).net_connections(kind="inet")
            if c.status == psutil.CONN_LISTEN
        }
        assert listening == {"127.0.0.1"}, listening
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_every_fastapi_service_serves_its_docs_offline(tmp_path: Path):
    from services.crawler.api import CrawlerSettings
    from services.crawler.api import build_app as crawler_app
    from services.dedup.worker import DedupSettings
    from services.dedup.worker import build_app as dedup_app
    from services.inference.app import build_app as inference_app

    tiny = dict(d_model=64, n_layers=2, n_heads=4, d_ff=128, max_seq_len=128, kv_cache_tokens=512)
    apps = {
        "crawler": crawler_app(CrawlerSettings(data_dir=str(tmp_path / "crawler")))[0],
        "dedup": dedup_app(DedupSettings()),
        "inference": inference_app(InferenceSettings(embeddings=False, torch_threads=1, **tiny))[0],
    }
    for name, app in apps.items():  # no `with`: the apps' lifespans (engines, consumers) stay off
        try:
            check_docs_offline(TestClient(app))
        except AssertionError as exc:
            raise AssertionError(f"{name}: {exc}") from exc


def test_docs_link_prometheus_pages_that_debian_serves():
    for doc in (ROOT / "README.md", ROOT / "docs" / "explore.md"):
        text = doc.read_text()
        assert not re.search(r":9090/(targets|alerts)\b", text), f"{doc.name}: Debian's prometheus 404s there"
        assert ":9090/classic/targets" in text, doc.name
