"""/docs works offline: the page references only the app's own URLs, and those answer with the
vendored Swagger UI assets; /redoc (CDN-only) is off."""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient

from libs.service.app import SWAGGER_UI_DIR, create_app

ASSETS = {
    "swagger-ui-bundle.js": "text/javascript",
    "swagger-ui.css": "text/css",
    "favicon-32x32.png": "image/png",
}


def referenced_urls(html: str) -> list[str]:
    return re.findall(r"""(?:src|href)=["']([^"']+)["']|url:\s*['"]([^'"]+)['"]""", html)


def page_urls(html: str) -> list[str]:
    return [a or b for a, b in referenced_urls(html)]


def check_docs_offline(client: TestClient, prefix: str = "") -> None:
    page = client.get("/docs")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert not re.search(r"https?:|//[a-z]", page.text, re.I), "the docs page names a remote URL"
    urls = page_urls(page.text)
    assert {u.rsplit("/", 1)[1] for u in urls} == {*ASSETS, "openapi.json"}, urls
    for url in urls:
        assert url.startswith(prefix + "/"), url
        reply = client.get(url.removeprefix(prefix))
        assert reply.status_code == 200, url
        name = url.rsplit("/", 1)[1]
        expected = ASSETS.get(name, "application/json")
        assert reply.headers["content-type"].split(";")[0] == expected, (url, reply.headers["content-type"])
        if name in ASSETS:
            assert reply.content == (SWAGGER_UI_DIR / name).read_bytes()
    # no online validator badge either (it would fetch validator.swagger.io)
    assert '"validatorUrl": null' in page.text


def test_docs_page_and_its_assets_are_local() -> None:
    check_docs_offline(TestClient(create_app("demo")))


def test_redoc_is_off_and_unknown_assets_are_json_404() -> None:
    client = TestClient(create_app("demo"))
    assert client.get("/redoc").status_code == 404
    missing = client.get("/docs/assets/nope.js")
    assert missing.status_code == 404 and missing.json()["error"]["type"] == "not_found"
    escape = client.get("/docs/assets/..%2F..%2Fapp.py")
    assert escape.status_code == 404


def test_docs_follow_root_path_behind_a_proxy() -> None:
    client = TestClient(create_app("demo"), root_path="/api")
    html = client.get("/docs").text
    assert all(u.startswith("/api/") for u in page_urls(html)), html


def test_docs_url_none_turns_the_page_and_its_assets_off() -> None:
    client = TestClient(create_app("demo", docs_url=None))
    assert client.get("/docs").status_code == 404
    assert client.get("/docs/assets/swagger-ui.css").status_code == 404
    assert client.get("/openapi.json").status_code == 200


def test_docs_page_is_not_in_the_schema_and_the_app_keeps_its_own_parameters() -> None:
    app = create_app("demo", swagger_ui_parameters={"deepLinking": False})
    client = TestClient(app)
    assert not any(p.startswith("/docs") for p in client.get("/openapi.json").json()["paths"])
    assert '"deepLinking": false' in client.get("/docs").text


@pytest.mark.parametrize("name", sorted(ASSETS))
def test_vendored_assets_are_present_and_not_empty(name: str) -> None:
    assert (SWAGGER_UI_DIR / name).stat().st_size > 100
