"""The labelling page in headless Chromium (selenium): keys and clicks end up in the labels file.

Nothing is played aloud; the page only loads each recording. Skipped where Chromium, chromedriver or
selenium is missing (Debian: apt-get install chromium chromium-driver; pip install selenium).
"""

from __future__ import annotations

import json
import shutil

import pytest
from label_fixtures import serving, write_manifest

CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
CHROMEDRIVER = shutil.which("chromedriver")


def _missing() -> str | None:
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install 'selenium>=4')"
    if CHROMIUM is None:
        return "no chromium on PATH (Debian: apt-get install chromium)"
    if CHROMEDRIVER is None:
        return "no chromedriver on PATH (Debian: apt-get install chromium-driver)"
    return None


pytestmark = [pytest.mark.browser, pytest.mark.skipif(_missing() is not None, reason=str(_missing()))]


@pytest.fixture(scope="module")
def driver():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--autoplay-policy=no-user-gesture-required",
        "--mute-audio",
        "--disable-dev-shm-usage",
    ):
        opts.add_argument(arg)
    d = webdriver.Chrome(options=opts, service=Service(CHROMEDRIVER))
    yield d
    d.quit()


def _item(d) -> str:
    return d.execute_script("return document.body.dataset.item")


def _wait(d, cond, what: str):
    from selenium.webdriver.support.ui import WebDriverWait

    idle = lambda x: x.execute_script("return document.body.dataset.busy") == "0"  # noqa: E731
    return WebDriverWait(d, 15, 0.05).until(lambda x: idle(x) and cond(x), message=what)


def _keys(d, *keys: str, ctrl: bool = False) -> None:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    chain = ActionChains(d)
    if ctrl:
        chain = chain.key_down(Keys.CONTROL)
    chain = chain.send_keys(*keys)
    if ctrl:
        chain = chain.key_up(Keys.CONTROL)
    chain.perform()


def _records(path) -> list[dict]:
    if not path.exists():
        return []
    return [
        {k: v for k, v in json.loads(line).items() if k != "time"} for line in path.read_text().splitlines()
    ]


def _open(d, url) -> dict:
    d.get(url + "/")
    _wait(d, lambda x: _item(x), "the first recording")
    return d.execute_script("return state")


def test_keys_clicks_undo_and_skip_write_the_labels_file(driver, tmp_path):
    from selenium.webdriver.common.by import By

    manifest = write_manifest(tmp_path / "data")
    labels = tmp_path / "labels.jsonl"
    with serving(manifest, labels) as (url, session, _):
        s = _open(driver, url)
        first = s["item"]
        # the recording loads from the server and the browser decodes it (0.3 s of sine)
        _wait(
            driver,
            lambda x: x.execute_script("return document.getElementById('player').duration") > 0.2,
            "the audio to load",
        )
        assert "1 / 8 labelled" in driver.find_element(By.ID, "progress").text
        assert "gone: audio file not found" in driver.find_element(By.ID, "notice-list").get_attribute(
            "textContent"
        )
        _keys(driver, "2")
        _wait(driver, lambda x: _item(x) != first["id"], "the next recording after pressing 2")
        assert _records(labels) == [{"id": first["id"], "label": first["candidates"][1]}]
        assert "2 / 8 labelled" in driver.find_element(By.ID, "progress").text

        second = _item(driver)
        driver.find_element(By.ID, "none").click()
        _wait(driver, lambda x: _item(x) != second, "the next recording after none of these")
        assert _records(labels)[-1] == {"id": second, "none_of_these": True}

        _keys(driver, "u")
        _wait(driver, lambda x: _item(x) == second, "undo to bring the recording back")
        assert _records(labels)[-1] == {"id": second, "undo": True}

        _keys(driver, "s")
        _wait(driver, lambda x: _item(x) != second, "skip")
        assert len(_records(labels)) == 3  # a skip writes nothing
        assert list(session.queue)[-1] == second

        third = _item(driver)
        driver.find_elements(By.CSS_SELECTOR, "#cands button")[3].click()
        _wait(driver, lambda x: _item(x) != third, "the next recording after a click")
        assert _records(labels)[-1] == {"id": third, "label": session.rows[third].candidates[3]}

        _keys(driver, "z", ctrl=True)
        _wait(driver, lambda x: _item(x) == third, "Ctrl-Z to undo")
        assert _records(labels)[-1] == {"id": third, "undo": True}


def test_errors_are_shown_and_nothing_is_written(driver, tmp_path):
    from selenium.webdriver.common.by import By

    manifest = write_manifest(tmp_path / "data")
    labels = tmp_path / "labels.jsonl"
    with serving(manifest, labels) as (url, session, _):
        _open(driver, url)
        error = lambda x: x.find_element(By.ID, "error").text  # noqa: E731
        _keys(driver, "u")
        _wait(driver, lambda x: error(x) == "nothing to undo in this session", "the server's message")
        _keys(driver, "9")
        _wait(driver, lambda x: "there is no candidate 9" in error(x), "the page's message")
        assert _records(labels) == []

        # the next recording's audio vanishes: the page says so with the server's message
        rid = session.queue[1]
        (manifest.parent / "audio" / f"{rid}.wav").unlink()
        _keys(driver, "1")
        _wait(driver, lambda x: _item(x) == rid and "audio file not found" in error(x), "the missing audio")
        _keys(driver, "s")
        _wait(driver, lambda x: _item(x) != rid, "skip past it")
        assert [r["id"] for r in _records(labels)] == [session.undo_stack[0]]


def test_done_page_after_the_last_answer(driver, tmp_path):
    from selenium.webdriver.common.by import By

    manifest = write_manifest(tmp_path / "data", n=1)
    labels = tmp_path / "labels.jsonl"
    with serving(manifest, labels) as (url, _, _):
        _open(driver, url)
        _keys(driver, "n")
        _wait(driver, lambda x: _item(x) == "", "the done page")
        assert driver.find_element(By.ID, "done").is_displayed()
        assert not driver.find_element(By.ID, "item").is_displayed()
        driver.find_element(By.ID, "undo-done").click()
        _wait(driver, lambda x: _item(x) == "r0", "undo from the done page")
    assert _records(labels) == [{"id": "r0", "none_of_these": True}, {"id": "r0", "undo": True}]
