"""The local web page, in a real browser (headless Chromium driven by selenium) and over plain HTTP."""

from __future__ import annotations

import json
import shutil
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from ocr_pages import make_page
from PIL import Image

from src import app, export, ocr, publish, reader

ROOT = Path(__file__).resolve().parents[1]
SCREENS = ROOT / "runs" / "screens"  # for a person to look at; runs/ is not committed


@pytest.fixture(scope="module")
def server(demo_run, tmp_path_factory):
    """The app on a free port, with one registered submission whose run folder has a report to show."""
    submissions = tmp_path_factory.mktemp("app") / "submissions"
    labels = np.load(demo_run / "test_probs.npy").argmax(1)
    meta = {"run": str(demo_run), "test_rows": len(labels)}
    publish.publish(labels, submissions, "20261126-120000_smoke_demo_cv0.90000", meta, preset="smoke", cv="0.90000")
    httpd = app.make_server("127.0.0.1", 0, reader.Reader.load(), demo_run.parent, submissions)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def call(url: str, data: bytes | None = None) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=data, method="POST" if data is not None else "GET")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def stroke_png(points: list[tuple[int, int]], width: int = 18) -> bytes:
    import cv2

    canvas = np.full((280, 280), 255, np.uint8)
    cv2.polylines(canvas, [np.array(points, np.int32)], False, 0, width, cv2.LINE_AA)
    return cv2.imencode(".png", canvas)[1].tobytes()


SEVEN = [(70, 60), (210, 60), (120, 230)]


def test_a_stroke_is_read_fast(server):
    status, first = call(f"{server}/api/draw", stroke_png(SEVEN))
    assert status == 200 and first["digit"] == 7 and first["top3"][0][0] == 7
    assert first["seen"].startswith("data:image/png;base64,")
    timings = []
    for _ in range(5):
        start = time.perf_counter()
        call(f"{server}/api/draw", stroke_png(SEVEN))
        timings.append(time.perf_counter() - start)
    assert min(timings) < 0.5  # measured about 0.01 s here; the goal is 0.2 s per stroke


BAD = {
    "a non-image": ("/api/read?name=notes.txt", b"just some text", "notes.txt: not an image"),
    "an empty file": ("/api/read?name=empty.jpg", b"", "empty.jpg: empty file"),
    "an empty canvas": ("/api/draw", stroke_png([]), "the canvas is empty: draw a digit"),
    "a drawing that is no PNG": ("/api/draw", b"\x00\x01", "the drawing is not a PNG image"),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_input_is_a_message_and_the_server_keeps_serving(server, case):
    path, body, message = BAD[case]
    status, result = call(f"{server}{path}", body)
    assert status == 400 and message in result["error"]
    assert call(f"{server}/api/draw", stroke_png(SEVEN))[1]["digit"] == 7  # the next request is served


def test_too_large_and_too_long_are_refused(server):
    status, result = call(f"{server}/api/read?name=huge.jpg", b"\xff" * (app.MAX_UPLOAD + 1))
    assert status == 413 and "the limit is 25 MB" in result["error"]
    blank = np.full((60, 40, 3), 250, np.uint8)
    long_pdf = export.searchable_pdf([export.pdf_page(blank, [])] * 200)
    status, result = call(f"{server}/api/read?name=long.pdf", long_pdf)
    assert status == 400 and "long.pdf: 200 pages; at most 20" in result["error"]
    assert call(f"{server}/api/runs")[0] == 200


# --- in a real browser ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser():
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not chromium or not driver:
        pytest.skip("no chromium/chromedriver: apt-get install chromium chromium-driver (.ci/run does)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--window-size=1200,1000"):  # fmt: skip
        options.add_argument(flag)
    chrome = webdriver.Chrome(service=Service(driver), options=options)
    chrome.implicitly_wait(0)
    SCREENS.mkdir(parents=True, exist_ok=True)
    yield chrome
    chrome.quit()


def wait_for(chrome, condition, seconds: float = 30):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(chrome, seconds).until(lambda _: condition())


def test_draw_a_seven_and_the_page_shows_7(server, browser):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    browser.get(server)
    canvas = browser.find_element(By.ID, "canvas")
    (ActionChains(browser).move_to_element_with_offset(canvas, -70, -80).click_and_hold()
     .move_by_offset(70, 0).move_by_offset(70, 0).move_by_offset(-45, 85).move_by_offset(-45, 85)
     .release().perform())  # fmt: skip
    wait_for(browser, lambda: browser.find_element(By.ID, "digit").text == "7")
    assert len(browser.find_elements(By.CSS_SELECTOR, "#bars .bar")) == 3
    assert browser.find_element(By.ID, "seen").get_attribute("src").startswith("data:image/png")
    browser.save_screenshot(str(SCREENS / "draw.png"))
    browser.find_element(By.ID, "clear").click()
    assert browser.find_element(By.ID, "digit").text == ""


def test_read_a_photo_and_the_page_shows_its_digits(server, browser, real_dir, tmp_path):
    from selenium.webdriver.common.by import By

    from src import data

    images, labels, _, _ = data.load_train(real_dir)
    rows = reader.heldout_rows(labels, reader.ReaderConfig().heldout)
    rgb, texts = make_page(images[rows], labels[rows], np.random.default_rng(7), lines=2,
                           paper=(200, 195, 185), shadow=True, noise=4, jpeg=80)  # fmt: skip
    photo = tmp_path / "photo.jpg"
    Image.fromarray(rgb).save(photo, quality=85)
    browser.get(server)
    browser.find_element(By.CSS_SELECTOR, "nav button[data-tab=read]").click()
    browser.find_element(By.ID, "file").send_keys(str(photo))
    wait_for(browser, lambda: browser.find_element(By.ID, "text").text.strip() != "")
    shown = browser.find_element(By.ID, "text").text
    assert ocr.digit_errors(shown.splitlines(), texts)[0] <= 1, (shown, texts)
    links = [a.get_attribute("download") for a in browser.find_elements(By.CSS_SELECTOR, "#downloads a")]
    assert links == ["photo.json", "photo_digits.pdf"]
    assert browser.find_elements(By.CSS_SELECTOR, "#annotated img")
    browser.save_screenshot(str(SCREENS / "read.png"))
    browser.find_element(By.ID, "file").send_keys(str(ROOT / "README.md"))  # not an image: a message, no crash
    wait_for(browser, lambda: "README.md: not an image" in browser.find_element(By.ID, "read-error").text)


def test_runs_tab_lists_the_registered_submission_with_its_plots(server, browser):
    from selenium.webdriver.common.by import By

    browser.get(server)
    browser.find_element(By.CSS_SELECTOR, "nav button[data-tab=runs]").click()
    wait_for(browser, lambda: browser.find_elements(By.CSS_SELECTOR, "#runs-table tbody tr"))
    row = browser.find_element(By.CSS_SELECTOR, "#runs-table tbody tr")
    assert "20261126-120000_smoke_demo_cv0.90000.csv" in row.text and "0.90000" in row.text
    row.click()
    loaded = "return [...document.querySelectorAll('#plots img')].filter(i => i.complete && i.naturalWidth > 0).length"
    wait_for(browser, lambda: browser.execute_script(loaded) == 3, seconds=120)  # the report is made on demand
    browser.save_screenshot(str(SCREENS / "runs.png"))
