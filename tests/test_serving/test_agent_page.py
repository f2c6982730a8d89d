"""The agent's page as an agent meets it: headless Chromium (Debian's chromium and
chromium-driver, driven by Selenium) on the running service, on a laptop-sized window.

It looks a customer up by a secondary identifier, checks what a person sees against the event
store (the last purchase in the timeline, the consents), records an outcome with the button and
sees it in the timeline. The screenshot is kept in build/test-artifacts/agent_page.png.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest
from test_customer_360 import ranked_ids

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = Path(os.environ.get("NBA_TEST_ARTIFACTS", ROOT / "build" / "test-artifacts"))
WIDTH, HEIGHT = 1366, 768  # a laptop screen
REVOKING = {"consent_revoked", "unsubscribe", "complaint"}


def _chromium() -> tuple[str, str]:
    """Debian's chromium and chromedriver, installed here if missing (the tests run as root
    in CI); a clear failure, not a skip, if that is impossible."""
    missing = not (shutil.which("chromium") and shutil.which("chromedriver"))
    if missing and os.geteuid() == 0 and shutil.which("apt-get"):
        subprocess.run(
            ["apt-get", "install", "-y", "-q", "chromium", "chromium-driver"],
            check=False,
            capture_output=True,
            env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
        )
    browser, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (browser and driver):
        pytest.fail("the browser test needs Debian's chromium and chromium-driver (apt-get)")
    return browser, driver


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    binary, driver = _chromium()
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    # headless, and none of Chromium's own connections: this machine reaches nothing outside
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--window-size={WIDTH},{HEIGHT}",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium')}",
    ):
        options.add_argument(flag)
    chrome = webdriver.Chrome(service=Service(driver), options=options)
    chrome.set_window_size(WIDTH, HEIGHT)
    yield chrome
    chrome.quit()


def _wait(chrome, condition, seconds: float = 30):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(chrome, seconds, poll_frequency=0.1).until(condition)


def _look_up(chrome, key: str) -> None:
    from selenium.webdriver.common.by import By

    before = chrome.find_element(By.ID, "status").text
    box = chrome.find_element(By.ID, "key")
    box.clear()
    box.send_keys(key)
    chrome.find_element(By.ID, "find").click()
    _wait(chrome, lambda c: c.find_element(By.ID, "status").text not in ("", before, "looking up…"))


def _texts(chrome, selector: str) -> list[str]:
    from selenium.webdriver.common.by import By

    return [e.text for e in chrome.find_elements(By.CSS_SELECTOR, selector)]


@pytest.fixture(scope="module")
def candidates(online_world) -> list[tuple[str, str, str]]:
    """(customer_id, a phone identifier, an e-mail identifier) of buyers with both, from the
    sorted ids ranked 2000-3000 (other tests of the shared service use others)."""
    rows = online_world.con.execute(
        "SELECT customer_id, min(identifier) FILTER (WHERE identifier LIKE 'phone:%'), "
        "min(identifier) FILTER (WHERE identifier LIKE 'email:%') FROM identity "
        f"WHERE customer_id IN ({ranked_ids(2000, 3000)}) AND customer_id IN "
        "(SELECT customer_id FROM events WHERE event_type = 'purchase') "
        "GROUP BY customer_id HAVING bool_or(identifier LIKE 'phone:%') "
        "AND bool_or(identifier LIKE 'email:%') ORDER BY customer_id LIMIT 30"
    ).fetchall()
    assert len(rows) >= 5
    return rows


def test_an_agent_looks_a_customer_up_and_records_an_outcome(
    served_world, online_world, browser, candidates
):
    from selenium.webdriver.common.by import By

    browser.get(served_world.url + "/agent/")
    assert browser.title.startswith("Customer 360")
    found = None
    for cid, phone, _email in candidates:
        _look_up(browser, phone)
        if browser.find_element(By.ID, "accepted").is_enabled():
            found = cid  # a customer with an offer to make
            break
    if found is None:
        pytest.fail("no customer of the test world got an offer to make")
    cid = found
    assert browser.find_element(By.ID, "view").is_displayed()
    assert cid in browser.find_element(By.ID, "who").text

    events = online_world.con.execute(
        "SELECT epoch_us(ts) AS ts_us, channel, event_type, amount FROM events "
        "WHERE customer_id = ? ORDER BY ts DESC",
        [cid],
    ).df()
    # the timeline holds the customer's last purchase, as the agent reads it
    last = events[events["event_type"] == "purchase"].iloc[0]
    timeline = _texts(browser, "#timeline li")
    purchase_text = f"bought for {last['amount']:,.2f} on {last['channel'].replace('_', ' ')}"
    when = pd.Timestamp(int(last["ts_us"]), unit="us", tz="UTC").strftime("%Y-%m-%d %H:%M")
    assert any(purchase_text in t and t.startswith(when) for t in timeline), timeline

    # the consents are what the event history says
    for row in browser.find_elements(By.CSS_SELECTOR, "#consents tr"):
        channel_words, shown = row.find_elements(By.TAG_NAME, "td")[:2]
        own = events[events["channel"] == channel_words.text.replace(" ", "_")]
        granted = own.loc[own["event_type"] == "consent_granted", "ts_us"].max()
        revoked = own.loc[own["event_type"].isin(REVOKING), "ts_us"].max()
        given = pd.notna(granted) and (pd.isna(revoked) or revoked < granted)
        assert shown.text == ("yes" if given else "no"), channel_words.text

    # a recommendation with a reason, and responsiveness bars
    assert browser.find_element(By.ID, "decision").text
    assert [t for t in _texts(browser, "#reasons li") if t]
    assert len(browser.find_elements(By.CSS_SELECTOR, "#responsiveness .bar")) >= 3

    # the essentials fit a laptop screen without scrolling
    height = browser.execute_script("return window.innerHeight")
    for selector in ("#decision", "#reasons", "#consents", "#responsiveness", "#timeline li"):
        bottom = browser.execute_script(
            "return document.querySelector(arguments[0]).getBoundingClientRect().bottom", selector
        )
        assert bottom <= height, f"{selector} ends at {bottom}px of {height}px"

    # nothing is loaded from outside the service
    origins = browser.execute_script(
        "return performance.getEntriesByType('resource').map(e => new URL(e.name).origin)"
    )
    assert set(origins) <= {served_world.url}, origins

    # the agent records the outcome; it appears in the timeline
    browser.find_element(By.ID, "token").send_keys(served_world.token)
    browser.find_element(By.ID, "accepted").click()
    _wait(browser, lambda c: "recorded" in c.find_element(By.ID, "status").text)
    newest = _texts(browser, "#timeline li")[:2]  # only this view's own holdout may be newer
    assert any("accepted" in t for t in newest), newest

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "agent_page.png"
    browser.save_screenshot(str(shot))
    assert shot.stat().st_size > 10_000


def test_an_unknown_identifier_says_so_on_the_page(served_world, browser):
    from selenium.webdriver.common.by import By

    browser.get(served_world.url + "/agent/")
    _look_up(browser, "loyalty:no-such-card")
    status = browser.find_element(By.ID, "status")
    assert "no customer is known" in status.text and "error" in status.get_attribute("class")
    assert not browser.find_element(By.ID, "view").is_displayed()
