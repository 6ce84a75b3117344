"""The web UI end to end in a real browser: Debian's headless Chromium driven by Playwright,
against the real service (uvicorn in a thread, embedded worker, SQLite) over loopback.

Covered: upload through the page and its counts; a tiny job started from the form and
watched to ``succeeded`` over server-sent events (charts and log filled); search by a dropped
file and by a clicked thumbnail; a 422 shown next to its field; a hostile collection name
rendered as text; the key prompt with ``REID_API_KEYS``. With ``REID_UI_SCREENSHOTS=DIR``
each page is saved as DIR/<page>.png (``docs/ui/`` is made that way).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.core.settings import Settings
from demo.service import DemoService
from tests.helpers import zip_tree
from trainer.synth import generate_dataset

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [
    pytest.mark.usefixtures("isolated_env"),
    pytest.mark.skipif(CHROMIUM is None, reason="needs Chromium (apt-get install chromium)"),
]
sync_api = pytest.importorskip("playwright.sync_api")

TINY = {  # the form's fields a test fills in (the others stay empty: defaults)
    "arch": "mobilenet_v2", "pretrained": "none", "epochs": "2", "iters": "2",
    "batch_size": "8", "num_instances": "4", "k1": "8", "k2": "4", "height": "64",
    "width": "32", "eval_step": "1", "workers": "0", "amp": "false", "device": "cpu",
}  # fmt: skip
FAST = {"heartbeat_interval_s": 0.2, "poll_interval_s": 0.1, "progress_interval_s": 0.0}
HOSTILE = "<img src=x onerror=alert(1)>"
SHOTS = os.environ.get("REID_UI_SCREENSHOTS") and Path(os.environ["REID_UI_SCREENSHOTS"]).resolve()


@pytest.fixture(scope="module")
def archives(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("ui-synth")
    out = {}
    for name, style, seed in (("daylight", "market", 0), ("night-cameras", "night", 1)):
        generate_dataset(base / name, 8, 2, style, seed, height=64, width=32, images_per_camera=3)
        out[name] = base / f"{name}.zip"
        out[name].write_bytes(zip_tree(base / name))
    query = next((base / "night-cameras" / "query").iterdir())
    out["query-image"] = query
    return out


def _serve(tmp: Path, **settings: Any) -> DemoService:
    values = {"data_dir": tmp, "host": "127.0.0.1", "port": 0, **FAST, **settings}
    service = DemoService(Settings(_env_file=None, **values))
    service.start()
    return service


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoService]:
    svc = _serve(tmp_path_factory.mktemp("ui-service"))
    yield svc
    svc.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    """A fresh tab that fails the test on a script error, a CSP violation or an alert."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    tab = context.new_page()
    problems: list[str] = []
    tab.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
    tab.on("dialog", lambda d: (problems.append(f"dialog: {d.message}"), d.dismiss()))

    def console(message: Any) -> None:
        if message.type == "error" and "Content-Security-Policy" in message.text:
            problems.append(message.text)

    tab.on("console", console)
    tab.set_default_timeout(30_000)
    yield tab
    context.close()
    assert not problems, problems


def _shot(tab: Any, name: str) -> None:
    if SHOTS:  # resolved at import: the tests run in a temporary working directory
        SHOTS.mkdir(parents=True, exist_ok=True)
        loaded = "[...document.images].every((i) => !i.getAttribute('src') || i.complete)"
        for _ in range(50):  # thumbnails load lazily: give the ones in view a moment to arrive
            if tab.evaluate(loaded):  # (wait_for_function would need eval, which CSP forbids)
                break
            tab.wait_for_timeout(100)
        tab.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def _upload(tab: Any, url: str, archive: Path, name: str, labeled: bool) -> None:
    tab.goto(f"{url}/ui/")
    tab.set_input_files("#upload-file", str(archive))
    tab.fill("#upload-name", name)
    tab.select_option("#upload-labeled", "true" if labeled else "false")
    tab.click("#upload-submit")
    tab.wait_for_selector("#upload-result")


def test_the_whole_flow_in_the_browser(
    service: DemoService, page: Any, archives: dict[str, Path]
) -> None:
    url = service.url
    # upload through the page: the server's counts come back and the list shows the row
    _upload(page, url, archives["daylight"], "daylight", labeled=True)
    result = page.inner_text("#upload-result")
    assert 'Stored "daylight"' in result and "identities" in result
    _upload(page, url, archives["night-cameras"], "night-cameras", labeled=False)
    page.wait_for_selector("#collections a.name:text('night-cameras')")  # the list reloads
    assert page.locator("#collections a.name", has_text="night-cameras").count() == 1
    _shot(page, "collections")

    # a collection page: thumbnails that really load
    page.click("#collections a.name >> text=night-cameras")
    page.wait_for_selector(".tile img.thumb[src]")
    assert page.locator(".tile").count() > 0
    _shot(page, "collection")

    # the form is built from the OpenAPI schema: an out-of-range value gets its 422 in place
    page.goto(f"{url}/ui/jobs/new")
    for picker, name in (("#target", "night-cameras"), ("#source", "daylight")):
        option = page.locator(f"{picker} option", has_text=name).inner_text()
        page.select_option(picker, label=option)
    for name, value in TINY.items():
        field = page.locator(f"[name={name}]")
        if field.evaluate("e => e.tagName") == "SELECT":
            field.select_option(value)
        else:
            field.fill(value)
    page.fill("[name=epochs]", "0")
    page.click("#job-submit")
    error = page.locator("label:has([name=epochs]) .field-error")
    error.wait_for()
    assert "between 1 and 10000" in error.inner_text()
    _shot(page, "job_new")

    # corrected, the job starts and its page follows it over SSE to the end
    page.fill("[name=epochs]", TINY["epochs"])
    page.click("#job-submit")
    page.wait_for_url("**/ui/jobs/*")
    page.wait_for_selector("#job-state:text('succeeded')", timeout=240_000)
    page.wait_for_selector("#job-outcome")
    assert page.locator("figure.chart").count() >= 2  # loss and clusters, mAP with evaluation
    assert page.locator("#event-log li").count() >= 2  # e.g. queued/running ... succeeded
    assert page.locator("#epochs tbody tr").count() == 2
    _shot(page, "job")

    # search by a dropped file: a real drop event carrying the file
    page.click("#search-link")
    page.wait_for_selector("#index option[value]:not([value=''])", state="attached")
    data = archives["query-image"].read_bytes()
    handle = page.evaluate_handle(
        """([bytes, name]) => { const t = new DataTransfer(); const type = "image/jpeg";
            t.items.add(new File([new Uint8Array(bytes)], name, {type})); return t; }""",
        [list(data), archives["query-image"].name],
    )
    page.dispatch_event("#query-drop", "drop", {"dataTransfer": handle})
    page.fill("#f-top_k", "5")
    page.click("#search-submit")
    page.wait_for_selector("#results .result-row")
    assert page.locator("#results .result-row .hits .tile:not(.query)").count() == 5

    # and by clicking a thumbnail of a collection (its identity known: matches marked)
    page.click("#queries button.link")  # drop the file query
    page.select_option("#pick-collection", label="night-cameras")
    page.locator("#picker select[name=split]").select_option("query")
    page.wait_for_selector("#picker .grid[aria-busy=false] figcaption:has-text('query')")
    page.locator("#picker .tile.pickable").first.click()
    page.select_option("#f-split", "query")  # a tiny model ranks near-randomly: the query
    page.fill("#f-top_k", "1000")  # split holds the image itself, and all of it is returned
    page.click("#search-submit")
    page.wait_for_selector("#results .result-row h3:has-text('share its identity')")
    assert page.locator("#results .tile.match").count() >= 1
    _shot(page, "search")

    # two clicked frames searched as one person (a tracklet), best hit per camera
    page.locator("#picker .tile.pickable").nth(1).click()
    page.select_option("#f-aggregate", "mean")
    page.check("#f-group_by")
    page.check("#f-rerank")
    page.click("#search-submit")
    page.wait_for_selector("#results .result-row h3:has-text('tracklet of 2 images')")
    assert page.locator("#results .result-row").count() == 1
    cameras = page.locator("#results .hits .tile:not(.query) figcaption").all_inner_texts()
    assert len(cameras) == len({c.split("cam ")[1].split(" ")[0] for c in cameras})  # one each

    page.goto(f"{url}/ui/models")
    page.wait_for_selector("table a:text('Download')")
    _shot(page, "models")
    page.goto(f"{url}/ui/jobs")
    page.wait_for_selector("table .badge.succeeded")


def test_a_hostile_collection_name_is_text(
    service: DemoService, page: Any, archives: dict[str, Path]
) -> None:
    with archives["daylight"].open("rb") as f:
        response = httpx.post(
            f"{service.url}/datasets",
            data={"name": HOSTILE, "labeled": "true"},
            files={"file": ("x.zip", f, "application/zip")},
            timeout=60,
        )
    assert response.status_code == 201, response.text
    dataset_id = response.json()["id"]
    page.goto(f"{service.url}/ui/")
    link = page.locator(f"#collections tr[data-id='{dataset_id}'] a.name")
    assert link.inner_text() == HOSTILE
    assert page.locator("#collections img").count() == 0
    page.goto(f"{service.url}/ui/collections/{dataset_id}")
    page.wait_for_selector(".tile")
    assert page.inner_text("#title") == f"Collection: {HOSTILE}"


def test_pages_send_a_strict_content_security_policy(service: DemoService) -> None:
    response = httpx.get(f"{service.url}/ui/")
    policy = response.headers["content-security-policy"]
    assert "script-src 'self' 'sha256-" in policy and "unsafe-inline" not in policy
    assert httpx.get(f"{service.url}/", headers={"Accept": "text/html"}).status_code == 307
    assert httpx.get(f"{service.url}/ui/static/js/nope.js").status_code == 404


def test_with_api_keys_the_pages_ask_for_one(
    page: Any, archives: dict[str, Path], tmp_path: Path
) -> None:
    keyed = _serve(tmp_path, api_keys=["s3cret-key"])
    try:
        page.goto(f"{keyed.url}/ui/")
        page.wait_for_selector("#key-dialog[open]")
        _shot(page, "api_key")
        page.fill("#key-input", "wrong")
        page.click("#key-form button[type=submit]")
        page.wait_for_selector("#key-error:text('invalid')")  # asked again, with the reason
        page.fill("#key-input", "s3cret-key")
        page.click("#key-form button[type=submit]")
        page.wait_for_selector("#collections")
        _upload(page, keyed.url, archives["daylight"], "keyed", labeled=True)  # XHR: key sent
        page.click("#collections a.name >> text=keyed")
        page.wait_for_selector(".tile img.thumb[src^='blob:']")  # images fetched with the key
        assert httpx.get(f"{keyed.url}/datasets").status_code == 401  # nothing opened up
    finally:
        keyed.stop()


def test_the_demo_report_draws_the_job_pages_charts(page: Any, tmp_path: Path) -> None:
    from demo.report import ReportData, render_report

    epochs = [
        {"epoch": e, "loss": 3.0 - e, "clusters": 4 + e, "unclustered": 9 - e, "mAP": 0.2 + e / 10}
        for e in range(3)
    ]
    report = tmp_path / "report.html"
    data = ReportData("report", 0.1, 0.4, 0.2, 0.5, epochs, queries=[])
    report.write_text(render_report(data), encoding="utf-8")
    page.goto(report.as_uri())
    page.wait_for_selector("#charts figure.chart >> nth=2")
    titles = page.locator("#charts .u-title").all_inner_texts()
    assert titles == ["Loss", "Target clusters", "Retrieval"]
    _shot(page, "report")
