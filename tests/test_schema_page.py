"""The API page at /schema works without internet: `syncengine serve` as a real process, and
Debian's Chromium, headless, with every host but the service closed to it.

Chromium is required, not optional: `scripts/test` installs it where it can (root with apt-get).
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from syncengine.docs import assets_path
from tests.test_serve import environment, serving

# Names and values an HTML page loads something from; a `//host` value is another host too.
_LINKS = re.compile(r"""\b(?:src|href)\s*=\s*["']([^"']*)["']""", re.IGNORECASE)
_CSS_URLS = re.compile(r"""url\(\s*["']?([^"')]*)""")
CONTENT_TYPES = {
    "swagger-ui.css": "text/css; charset=utf-8",
    "swagger-ui-bundle.js": "text/javascript; charset=utf-8",
    "swagger-ui-standalone-preset.js": "text/javascript; charset=utf-8",
    "favicon-32x32.png": "image/png",
    "favicon-16x16.png": "image/png",
}
# One operation of the rendered Swagger UI: its method, then its path.
_OPERATION = re.compile(r'opblock-summary-method">(\w+)</span>.*?data-path="([^"]+)"', re.DOTALL)


def chromium() -> str:
    path = shutil.which("chromium")
    if path is None:
        pytest.fail(
            "Chromium is not installed, and this test needs it (it never skips): run `bash scripts/test`, "
            "which installs it as root, or `sudo apt-get install -y chromium` (Debian/Ubuntu)"
        )
    return path


async def render(base: str, page: str, tmp_path: Path) -> tuple[str, list[str]]:
    """The DOM of `page` once its scripts have run, and the requests Chromium started for it.

    Every host but 127.0.0.1 is closed: names resolve to nothing, and whatever is not 127.0.0.1
    (an IP address too) goes to a proxy on a port where nothing listens.
    """
    net_log = tmp_path / f"net-log-{len(list(tmp_path.glob('net-log-*')))}.json"
    process = await asyncio.create_subprocess_exec(
        chromium(),
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run",
        "--disable-quic", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
        "--proxy-server=127.0.0.1:1", "--proxy-bypass-list=127.0.0.1",
        f"--log-net-log={net_log}",
        "--virtual-time-budget=15000",
        "--dump-dom", f"{base}{page}",
        env=environment(HOME=str(tmp_path)), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    dom, err = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode == 0, err.decode(errors="replace")[-2000:]
    return dom.decode(), page_requests(net_log, base)


def page_requests(net_log: Path, base: str) -> list[str]:
    """The URLs the page asked for: requests started by the service's origin (its files, its
    scripts' fetches, its stylesheets' fonts), not Chromium's own (update checks, autofill)."""
    log = json.loads(net_log.read_text())
    start_job = log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
    events = (event.get("params") or {} for event in log["events"] if event["type"] == start_job)
    return [params["url"] for params in events if params.get("initiator") == base]


async def test_the_page_renders_every_endpoint_with_the_network_closed(
    project_copy: Callable[[], Path], tmp_path: Path
) -> None:
    project = project_copy().parent  # a SQLite file, made by serve
    async with serving([], environment(), project) as (base, _):
        entities = httpx.get(f"{base}/v1/entities").json()["entities"]
        dom, requests = await render(base, "/schema", tmp_path)
        # An operation opened by its link: its parameters, its request body and example rendered.
        opened, opened_requests = await render(base, "/schema#/sync/sync_enrollments", tmp_path)

    operations = set(_OPERATION.findall(dom))
    expected = {("POST", entity["endpoint"]) for entity in entities} | {("GET", "/v1/{entity}/{zoho_id}")}
    assert len(expected) > 5 and expected <= operations, (sorted(expected - operations), dom[-3000:])
    assert ("GET", "/v1/health") in operations
    assert "Idempotency-Key" in opened and "Request body" in opened and "Try it out" in opened, opened[-3000:]

    for urls in (requests, opened_requests):
        elsewhere = [url for url in urls if not url.startswith(f"{base}/")]
        assert not elsewhere, f"the page asked other hosts for {elsewhere}"
        # The log is read right: the page's own files are in it.
        for name in ("swagger-ui.css", "swagger-ui-bundle.js", "swagger-ui-standalone-preset.js"):
            assert f"{base}{assets_path()}/{name}" in urls, urls


async def test_the_page_and_its_files_name_no_other_host(project_copy: Callable[[], Path]) -> None:
    project = project_copy().parent
    async with serving([], environment(), project) as (base, _):
        async with httpx.AsyncClient(base_url=base) as http:
            pages = {path: await http.get(path) for path in ("/schema", "/schema/swagger")}
            files = {name: await http.get(f"{assets_path()}/{name}") for name in CONTENT_TYPES}
            unknown = await http.get(f"{assets_path()}/swagger-initializer.js")
            document = await http.get("/schema/openapi.json")
            other_pages = {path: (await http.get(path)).status_code for path in ("/schema/redoc", "/schema/elements")}

    for path, page in pages.items():
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html"), path
        links = _LINKS.findall(page.text)
        assert len(links) >= 4, links  # the stylesheet, two scripts, the favicon
        assert all(link.startswith(f"{assets_path()}/") for link in links), links
    for name, response in files.items():
        assert response.status_code == 200, name
        assert response.headers["content-type"] == CONTENT_TYPES[name], name
        # The path holds the version: a new Swagger UI is a new URL, so the files never go stale.
        assert response.headers["cache-control"] == "public, max-age=31536000, immutable", name
        assert response.headers["x-content-type-options"] == "nosniff", name
    # The stylesheet draws from data: URLs only (no fonts, no images from elsewhere).
    css_urls = _CSS_URLS.findall(files["swagger-ui.css"].text)
    assert css_urls and all(url.startswith("data:") for url in css_urls), [u[:40] for u in css_urls]

    assert unknown.status_code == 404
    assert unknown.json()["message"] == (
        "no documentation asset 'swagger-initializer.js' (served: swagger-ui.css, swagger-ui-bundle.js, "
        "swagger-ui-standalone-preset.js, favicon-32x32.png, favicon-16x16.png): open the page at /schema"
    )
    assert document.status_code == 200 and document.json()["openapi"].startswith("3.1")
    assert other_pages == {"/schema/redoc": 404, "/schema/elements": 404}  # they load from CDNs
