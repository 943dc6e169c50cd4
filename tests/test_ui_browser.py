"""The web UI in a real browser: Debian's chromium driven through chromium-driver by Selenium,
against a real service and worker. Sign in, open a finished job, look at its report, review five
items by keyboard, check that the labels export reflects them, watch a running job's progress
advance live until it is cancelled, and check that another tenant's key sees none of it.
Screenshots go to build/screenshots/; with CANDOR_DOCS_SCREENSHOT=1 the review page's is also
written to docs/review.png (the README's picture)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import httpx
import pytest

from tests.review_service import labels, make_trained, other_key  # noqa: F401
from tests.sdk_service import celery_worker, service_url  # noqa: F401

ROOT = Path(__file__).resolve().parents[1]
SHOTS = ROOT / "build" / "screenshots"
CHROMIUM = "/usr/bin/chromium"
DRIVER = "/usr/bin/chromedriver"

if not (os.path.exists(CHROMIUM) and os.path.exists(DRIVER)):  # make test installs both (Makefile: browser)
    pytest.fail(f"{CHROMIUM} and {DRIVER} are needed: apt-get install chromium chromium-driver", pytrace=False)

from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support import expected_conditions as ec  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402


@pytest.fixture(scope="module")
def trained(service_url, celery_worker):  # noqa: F811
    return make_trained(service_url, "fashion-review", seed=7)


@pytest.fixture
def browser(tmp_path):
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1280,900", f"--user-data-dir={tmp_path / 'profile'}"):  # fmt: skip
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(DRIVER), options=opts)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def shot(driver, name: str) -> Path:
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = SHOTS / f"{name}.png"
    driver.save_screenshot(str(path))
    return path


def wait(driver, by, what, timeout: float = 30):
    return WebDriverWait(driver, timeout).until(ec.presence_of_element_located((by, what)))


def press(driver, key: str) -> None:
    """A key press on the page, as a person makes it (to whatever has the focus)."""
    ActionChains(driver).send_keys(key).perform()


def sign_in(driver, base: str, key: str) -> None:
    driver.get(f"{base}/ui/")
    wait(driver, By.ID, "key").send_keys(key)
    driver.find_element(By.ID, "signin").click()
    WebDriverWait(driver, 30).until(ec.url_contains("/ui/datasets"))


def test_sign_in_report_review_five_by_keyboard_and_the_export_reflects_them(browser, trained):
    base = trained.base
    sign_in(browser, base, trained.key)
    section = wait(browser, By.ID, f"dataset-{trained.dataset_id}")
    assert section.find_element(By.CLASS_NAME, "item-count").text == str(len(trained.candidates))
    assert len(section.find_elements(By.CSS_SELECTOR, "figure svg")) == 2
    shot(browser, "datasets")

    section.find_element(By.CSS_SELECTOR, f'a.job-link[href="/ui/jobs/{trained.job_id}"]').click()
    WebDriverWait(browser, 30).until(ec.text_to_be_present_in_element((By.ID, "state"), "succeeded"))
    shot(browser, "job")
    browser.find_element(By.ID, "report-link").click()
    wait(browser, By.ID, "chart-confusion")
    assert browser.find_element(By.ID, "report-items").text == str(len(trained.candidates))
    for chart in ("confidence", "chosen", "confusion", "loss", "trust"):
        svg = browser.find_element(By.CSS_SELECTOR, f"#chart-{chart} svg")
        assert svg.size["width"] > 100 and svg.size["height"] > 20, chart
    # the heat map's cells count the sets where the row's label won over the column's
    cells = browser.find_elements(By.CSS_SELECTOR, "#chart-confusion rect")
    assert len(cells) == len(trained.classes) ** 2
    shot(browser, "report")

    browser.get(f"{base}/ui/jobs/{trained.job_id}/review")
    picked: dict[str, str] = {}
    for n in range(5):
        item = wait(browser, By.ID, "item-id").text
        first = browser.find_element(By.CSS_SELECTOR, '#decide button[data-key="1"]')
        label = first.get_attribute("value")
        img = browser.find_element(By.ID, "item-image")
        assert browser.execute_script("return arguments[0].complete && arguments[0].naturalWidth", img) > 0
        if n == 0:
            shot(browser, "review")
            if os.environ.get("CANDOR_DOCS_SCREENSHOT") == "1":
                shutil.copy(SHOTS / "review.png", ROOT / "docs" / "review.png")
        if n == 2:  # a skip leaves the item in the queue and moves on
            press(browser, "s")
            WebDriverWait(browser, 30).until(lambda d, item=item: d.find_element(By.ID, "item-id").text != item)
            item = browser.find_element(By.ID, "item-id").text
            label = browser.find_element(By.CSS_SELECTOR, '#decide button[data-key="1"]').get_attribute("value")
        key = "n" if n == 4 else "1"
        press(browser, key)
        WebDriverWait(browser, 30).until(
            ec.text_to_be_present_in_element((By.ID, "done"), item), f"review {n + 1} ({key} on {item}) not recorded"
        )
        picked[item] = None if key == "n" else label
    shot(browser, "review-after")
    assert len(picked) == 5

    rows = labels(base, trained.auth, trained.job_id)
    reviewed = {i: (r["reviewed_label"], r["reviewed_none_of_these"]) for i, r in rows.items() if r["reviewed"]}
    assert reviewed == {i: (label, label is None) for i, label in picked.items()}
    trail = httpx.get(f"{base}/v1/jobs/{trained.job_id}/reviews", headers=trained.auth).json()["items"]
    assert {d["reviewer"] for d in trail} == {f"{trained.tenant}/{trained.key[:12]}"}


def test_a_running_jobs_page_follows_its_progress_live_until_it_ends(browser, trained):
    from tests.review_service import CONFIG

    config = CONFIG | {"train": CONFIG["train"] | {"epochs": 1000}}  # long enough to watch, then cancelled
    r = httpx.post(f"{trained.base}/v1/jobs", headers=trained.auth, json={"dataset_id": trained.dataset_id,
                                                                         "config": config})  # fmt: skip
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    try:
        sign_in(browser, trained.base, trained.key)
        browser.get(f"{trained.base}/ui/jobs/{job_id}")
        assert wait(browser, By.ID, "job").get_attribute("data-terminal") == "no"
        # the page polls: training's epochs appear and advance without a reload
        WebDriverWait(browser, 120).until(lambda d: d.find_element(By.ID, "detail").text.startswith("epoch "))
        first = browser.find_element(By.ID, "detail").text
        WebDriverWait(browser, 60).until(lambda d: d.find_element(By.ID, "detail").text.split(" · ")[0]
                                         != first.split(" · ")[0])  # fmt: skip
        assert browser.find_element(By.ID, "state").text == "training"
        assert int(browser.find_element(By.ID, "bar").get_attribute("value")) > 0
        shot(browser, "job-running")
    finally:
        httpx.post(f"{trained.base}/v1/jobs/{job_id}/cancel", headers=trained.auth)
    WebDriverWait(browser, 120).until(ec.text_to_be_present_in_element((By.ID, "state"), "cancelled"))
    assert not browser.find_element(By.ID, "links").is_displayed()  # no report for a cancelled job


def test_another_tenants_key_sees_none_of_it(browser, trained, other_key):  # noqa: F811
    base = trained.base
    sign_in(browser, base, other_key)
    assert wait(browser, By.ID, "no-datasets").is_displayed()
    assert "fashion-review" not in browser.page_source
    assert browser.find_element(By.ID, "who").text.startswith("review-other-tenant")
    for path in ("", "/report", "/review"):
        browser.get(f"{base}/ui/jobs/{trained.job_id}{path}")
        assert "does not exist" in wait(browser, By.ID, "error-detail").text
        assert browser.find_elements(By.ID, "item-image") == []
    shot(browser, "other-tenant")
    other = {"Authorization": f"Bearer {other_key}"}
    assert httpx.get(f"{base}/v1/jobs/{trained.job_id}/labels", headers=other).status_code == 404
    # signing out ends the session
    browser.get(f"{base}/ui/datasets")
    wait(browser, By.ID, "signout").click()
    WebDriverWait(browser, 30).until(ec.url_contains("/ui/login"))
    browser.get(f"{base}/ui/datasets")
    assert "/ui/login" in browser.current_url
