"""``/api/docs``: Swagger UI over ``/api/openapi.json``, every file from the app itself,
under a Content-Security-Policy that allows nothing else; "Try it out" sends the token."""

from __future__ import annotations

import json
import threading
import urllib.request
from collections.abc import Iterator
from html.parser import HTMLParser

import pytest
from flask import Flask
from flask.testing import FlaskClient
from playwright.sync_api import Request, expect
from werkzeug.serving import make_server

from tests.conftest import API_TOKEN
from tests.support.browser_support import chromium, screenshot

RENDER = 15_000  # ms for Swagger UI to fetch the document and draw every operation


class Assets(HTMLParser):
    """Every script's and stylesheet's address on a page, and any inline script."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self.inline_scripts = 0
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        named = dict(attrs)
        if tag == "script":
            self._in_script = True
            if named.get("src"):
                self.urls.append(str(named["src"]))
        if tag == "link" and named.get("href"):
            self.urls.append(str(named["href"]))
        if any(name.startswith("on") for name in named):
            self.inline_scripts += 1

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script and data.strip():
            self.inline_scripts += 1


def test_the_explorer_is_public_and_everything_it_loads_comes_from_the_app(
        client: FlaskClient) -> None:
    page = client.get("/api/docs")  # no token: the document it shows needs none either
    assert page.status_code == 200 and page.mimetype == "text/html"
    html = page.get_data(as_text=True)
    assert 'data-spec-url="/api/openapi.json"' in html
    found = Assets()
    found.feed(html)
    assert found.inline_scripts == 0
    assert len(found.urls) >= 3, found.urls  # Swagger UI's script and style, the start-up
    for url in found.urls:
        assert url.startswith("/") and not url.startswith("//"), url
        asset = client.get(url)
        assert asset.status_code == 200, url
        assert asset.mimetype in {"text/javascript", "application/javascript", "text/css",
                                  "image/png"}, (url, asset.mimetype)
        assert len(asset.data) > 0, url
    directives = dict(part.strip().partition(" ")[::2] for part in
                      page.headers["Content-Security-Policy"].split(";"))
    assert directives["default-src"] == "'none'"
    assert directives["script-src"] == "'self'" and directives["style-src"] == "'self'"
    assert directives["connect-src"] == "'self'"
    assert directives["frame-ancestors"] == "'none'"
    assert "unsafe" not in page.headers["Content-Security-Policy"]


@pytest.mark.parametrize("name", ["index.html", "swagger-initializer.js", "LICENSE",
                                  "..%2F__init__.py", "oauth2-redirect.html"])
def test_the_explorer_serves_only_its_own_files(client: FlaskClient, name: str) -> None:
    assert client.get(f"/api/docs/assets/{name}").status_code == 404


@pytest.fixture
def served(app: Flask) -> Iterator[str]:
    """The app over real HTTP on a free port (Celery eager, as in the ``app`` fixture)."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, name="explorer", daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    thread.join(timeout=10)
    server.server_close()


def test_the_explorer_renders_every_operation_and_tries_one_with_the_token(
        served: str) -> None:
    with chromium() as browser:
        context = browser.new_context(base_url=served, viewport={"width": 1280, "height": 800})
        context.set_default_timeout(RENDER)
        tab = context.new_page()
        console: list[str] = []
        errors: list[str] = []
        requested: list[str] = []
        tab.on("console", lambda message: console.append(f"{message.type}: {message.text}")
               if message.type in {"error", "warning"} else None)
        tab.on("pageerror", lambda error: errors.append(str(error)))
        tab.on("request", lambda request: requested.append(request.url))
        tab.goto("/api/docs")
        messages = tab.locator('.opblock-summary-path[data-path="/api/messages"]')
        try:
            expect(messages.first).to_be_visible(timeout=RENDER)
        except AssertionError as err:
            raise AssertionError(f"no operations drawn; console: {console}, "
                                 f"errors: {errors}") from err
        assert console == [] and errors == []  # a refused script, style or fetch says so
        with urllib.request.urlopen(f"{served}/api/openapi.json", timeout=10) as answer:
            paths = json.loads(answer.read())["paths"]
        assert tab.locator(".opblock").count() == sum(len(ops) for ops in paths.values())
        expect(tab.locator("#operations-campaigns-listCampaigns")).to_be_visible()

        tab.locator("button.authorize").first.click()
        tab.locator(".auth-container input").first.fill(API_TOKEN)
        tab.locator(".auth-btn-wrapper button.authorize").click()
        tab.locator(".auth-btn-wrapper button.btn-done").click()
        operation = tab.locator("#operations-campaigns-listCampaigns")
        operation.locator(".opblock-summary").click()
        operation.locator("button.try-out__btn").click()
        with tab.expect_request(lambda r: r.url.startswith(f"{served}/api/campaigns")) as sent:
            operation.locator("button.execute").click()
        call: Request = sent.value
        assert call.headers.get("authorization") == f"Bearer {API_TOKEN}"
        answered = call.response()
        assert answered is not None and answered.status == 200
        shown = operation.locator(".live-responses-table tbody .response-col_status")
        expect(shown.first).to_contain_text("200")  # the answer, shown under "Execute"
        screenshot(tab, "api-docs")
        context.close()
    assert errors == []
    assert console == []  # Content-Security-Policy refusals are console errors
    assert all(url.startswith(served) or url.startswith("data:") for url in requested), [
        url for url in requested if not url.startswith(served)]

