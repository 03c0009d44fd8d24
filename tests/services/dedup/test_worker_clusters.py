"""GET /v1/clusters without ?url=: every cluster, largest first, paged by limit/offset."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from services.dedup.worker import CLUSTER_URLS_SHOWN, CLUSTERS_PAGE_MAX, DedupSettings, build_app


def text_of(family: int) -> str:
    # Families share no word, so only exact copies cluster: the expected clusters are known.
    return " ".join(f"f{family}w{j}" for j in range(60))


def event(url: str, family: int) -> dict:
    text = text_of(family)
    return {
        "crawl_id": "c1",
        "url": url,
        "final_url": url,
        "status": 200,
        "content_sha256": hashlib.sha256(text.encode()).hexdigest(),
        "text": text,
        "fetched_at": 1.0,
    }


# family -> copies; families 90.. are singletons (no cluster)
SIZES = {1: 2, 2: 3, 3: 5, 4: 3, 90: 1, 91: 1}


@pytest.fixture
def client() -> Iterator[TestClient]:
    with TestClient(build_app(DedupSettings())) as c:
        yield c


def fill(client: TestClient, sizes: dict[int, int]) -> dict[int, list[str]]:
    urls = {f: [f"http://h{f:04d}.sim.test/copy-{i}" for i in range(n)] for f, n in sizes.items()}
    events = [event(us[i], f) for i in range(max(sizes.values())) for f, us in urls.items() if i < len(us)]
    r = client.post("/v1/pages", json={"events": events})
    assert r.status_code == 200, r.text
    return urls


def test_empty_index_lists_no_cluster(client: TestClient) -> None:
    r = client.get("/v1/clusters")
    assert r.status_code == 200
    assert r.json() == {"total": 0, "offset": 0, "limit": 50, "next_offset": None, "clusters": []}


def test_clusters_largest_first_with_their_ids_and_urls(client: TestClient) -> None:
    urls = fill(client, SIZES)
    body = client.get("/v1/clusters").json()
    assert body["total"] == 4 and body["next_offset"] is None
    got = [(c["size"], c["urls"]) for c in body["clusters"]]
    # ties (two clusters of 3) in the order of their first URL
    assert got == [(5, urls[3]), (3, urls[2]), (3, urls[4]), (2, urls[1])]
    for c in body["clusters"]:
        detail = client.get("/v1/clusters", params={"url": c["urls"][-1]}).json()
        assert detail["cluster_id"] == c["cluster_id"] and detail["size"] == c["size"]


def test_pages_cover_every_cluster_once(client: TestClient) -> None:
    fill(client, SIZES)
    everything = client.get("/v1/clusters").json()["clusters"]
    for limit in (1, 2, 3, 4, 5):
        seen, offset = [], 0
        for _ in range(10):  # bounded: at most 4 pages
            page = client.get("/v1/clusters", params={"limit": limit, "offset": offset}).json()
            assert page["limit"] == limit and page["offset"] == offset and page["total"] == 4
            seen += page["clusters"]
            if page["next_offset"] is None:
                break
            offset = page["next_offset"]
        assert seen == everything, limit
    beyond = client.get("/v1/clusters", params={"offset": 10}).json()
    assert beyond["clusters"] == [] and beyond["next_offset"] is None and beyond["total"] == 4


def test_a_large_cluster_lists_its_first_urls_and_its_size(client: TestClient) -> None:
    urls = fill(client, {7: CLUSTER_URLS_SHOWN + 5})
    (cluster,) = client.get("/v1/clusters").json()["clusters"]
    assert cluster["size"] == CLUSTER_URLS_SHOWN + 5
    assert cluster["urls"] == urls[7][:CLUSTER_URLS_SHOWN]


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"limit": 0}, "query.limit"),
        ({"limit": CLUSTERS_PAGE_MAX + 1}, "query.limit"),
        ({"limit": "ten"}, "query.limit"),
        ({"offset": -1}, "query.offset"),
        ({"offset": "1.5"}, "query.offset"),
        ({"url": ""}, "query.url"),
        ({"url": "http://h0001.sim.test/copy-0", "limit": 5}, "query.limit"),
        ({"url": "http://h0001.sim.test/copy-0", "offset": 0}, "query.offset"),
    ],
)
def test_bad_parameters_are_422_naming_the_field(client: TestClient, params: dict, field: str) -> None:
    fill(client, SIZES)
    r = client.get("/v1/clusters", params=params)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["field"] == field, r.json()
