"""The search page in a real headless browser (Debian's chromium through chromium-driver) against
the real system: open a shared URL, type a query, drop an image, ask for more like a result.

`.ci/run` installs chromium and chromium-driver; where they are missing this test is skipped,
unless CI_REQUIRE_BROWSER=1 (set by .ci/run), where that is a failure.
"""

from __future__ import annotations

import base64
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from gateway_support import System, image_of

from xmodal.encoders.mini.corpus import image_png

pytestmark = [pytest.mark.broker, pytest.mark.slow]

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
DRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
WAIT_S = 30


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    if not (os.path.exists(CHROMIUM) and os.path.exists(DRIVER)):
        if os.environ.get("CI_REQUIRE_BROWSER") == "1":
            pytest.fail(f"CI_REQUIRE_BROWSER=1 but {CHROMIUM} or {DRIVER} is missing (apt-get install chromium chromium-driver)")
        pytest.skip("needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,900", "--disable-gpu"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=DRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def results(driver: object, first: str | None = None, status_has: str = "") -> list[object]:
    """The result elements once the page shows results whose first is `first` (and a status saying `status_has`)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    def ready(d: object) -> list[object] | bool:
        status = d.find_element(By.ID, "status").text  # type: ignore[attr-defined]
        assert "error" not in d.find_element(By.ID, "status").get_attribute("class"), status  # type: ignore[attr-defined]
        hits = d.find_elements(By.CSS_SELECTOR, "#results article.hit")  # type: ignore[attr-defined]
        if not hits or status_has not in status or "searching" in status:
            return False
        if first is not None and hits[0].get_attribute("data-id") != first:
            return False
        return hits

    found = WebDriverWait(driver, WAIT_S).until(ready)
    assert isinstance(found, list)
    return found


def shown_thumbnails(driver: object) -> dict[str, str]:
    """data-id -> the src of its thumbnail, for results whose <img> has loaded (naturalWidth > 0)."""
    script = """
        const out = {};
        for (const hit of document.querySelectorAll('#results article.hit')) {
          const img = hit.querySelector('img.thumb');
          if (img && img.complete && img.naturalWidth > 0) out[hit.dataset.id] = img.src;
        }
        return out;"""
    return driver.execute_script(script)  # type: ignore[attr-defined,no-any-return]


def test_shared_url_typed_query_dropped_image_and_more_like_this(browser: object, system: System) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    driver = browser
    # A shared URL: the page opens on the results.
    driver.get(f"{system.url}?q=a+red+circle&modalities=image")  # type: ignore[attr-defined]
    hits = results(driver, first="images/red-circle.png", status_has="a red circle")
    assert {h.get_attribute("data-modality") for h in hits} == {"image"}  # type: ignore[attr-defined]
    thumbs = shown_thumbnails(driver)
    assert "images/red-circle.png" in thumbs and thumbs["images/red-circle.png"].startswith("data:image/png")  # kept as it came: a small PNG

    # Typed into the box; the URL follows, so it can be shared.
    box = driver.find_element(By.ID, "q")  # type: ignore[attr-defined]
    box.clear()
    box.send_keys("a blue square", Keys.ENTER)
    results(driver, first="images/blue-square.png", status_has="a blue square")
    assert "q=a+blue+square" in driver.current_url and "modalities=image" in driver.current_url  # type: ignore[attr-defined]
    assert "images/blue-square.png" in shown_thumbnails(driver)

    # An image dropped on the drop zone (a fresh drawing of the green triangle).
    png = base64.b64encode(image_png(image_of("images/green-triangle.png", seed=11))).decode()
    driver.execute_script(  # type: ignore[attr-defined]
        """
        const bytes = Uint8Array.from(atob(arguments[0]), (c) => c.charCodeAt(0));
        const transfer = new DataTransfer();
        transfer.items.add(new File([bytes], "triangle.png", { type: "image/png" }));
        const zone = document.getElementById("drop");
        zone.dispatchEvent(new DragEvent("dragover", { dataTransfer: transfer, bubbles: true, cancelable: true }));
        zone.dispatchEvent(new DragEvent("drop", { dataTransfer: transfer, bubbles: true, cancelable: true }));
        """,
        png,
    )
    hits = results(driver, first="images/green-triangle.png", status_has="triangle.png")
    thumbs = shown_thumbnails(driver)
    assert {h.get_attribute("data-id") for h in hits} <= set(thumbs)  # every image result shows its thumbnail  # type: ignore[attr-defined]
    assert "q=" not in driver.current_url  # type: ignore[attr-defined]

    # Everything, interleaved with badges: a sound plays its preview, a text shows its caption.
    driver.get(f"{system.url}?q=a+very+low+steady+hum&k=20")  # type: ignore[attr-defined]
    hits = results(driver, status_has="hum")
    badges = {h.get_attribute("data-id"): h.find_element(By.CSS_SELECTOR, ".badge").text for h in hits}  # type: ignore[attr-defined]
    assert len(badges) == 12 and set(badges.values()) == {"text", "image", "audio"}
    assert badges["sounds/low-hum.wav"] == "audio" and badges["notes/rain"] == "text"
    sounds = [h for h in hits if h.get_attribute("data-modality") == "audio"]  # type: ignore[attr-defined]
    hum = sounds[0]
    assert hum.get_attribute("data-id") == "sounds/low-hum.wav"  # type: ignore[attr-defined]
    assert hum.find_element(By.TAG_NAME, "audio").get_attribute("src").startswith("data:audio/wav")  # type: ignore[attr-defined]
    rain = next(h for h in hits if h.get_attribute("data-id") == "notes/rain")  # type: ignore[attr-defined]
    assert rain.find_element(By.CSS_SELECTOR, ".caption").text == "heavy rain falling on a tin roof"  # type: ignore[attr-defined]

    # More like this on the orange ring: a search with its own stored thumbnail finds it first.
    driver.get(f"{system.url}?q=an+orange+ring&modalities=image")  # type: ignore[attr-defined]
    hits = results(driver, status_has="orange ring")
    ring = next(h for h in hits if h.get_attribute("data-id") == "images/orange-ring.png")  # type: ignore[attr-defined]
    ring.find_element(By.CSS_SELECTOR, "button.more").click()  # type: ignore[attr-defined]
    results(driver, first="images/orange-ring.png", status_has="more like images/orange-ring.png")

    # A metadata chip filters on its value as the reply typed it: the string "2024", not the number;
    # the URL carries the typed filter, so the shared page finds the same.
    driver.get(f"{system.url}?q=quarterly+budget&modalities=text")  # type: ignore[attr-defined]
    hits = results(driver, first="notes/budget", status_has="3 results")
    chip = next(b for b in hits[0].find_elements(By.CSS_SELECTOR, ".meta button") if b.text == "year=2024")  # type: ignore[attr-defined]
    chip.click()
    hits = results(driver, first="notes/budget", status_has="1 results")
    assert driver.find_element(By.ID, "filter").get_attribute("value") == '{"year":"2024"}'  # type: ignore[attr-defined]
    assert "filter=%7B%22year%22%3A%222024%22%7D" in driver.current_url  # type: ignore[attr-defined]
    driver.get(driver.current_url)  # type: ignore[attr-defined]
    assert len(results(driver, first="notes/budget", status_has="1 results")) == 1

    # The network failing (the gateway gone) is said in the status, not left at "searching…".
    from selenium.webdriver.support.ui import WebDriverWait

    driver.execute_script("window.fetch = () => Promise.reject(new TypeError('network down'))")  # type: ignore[attr-defined]
    box = driver.find_element(By.ID, "q")  # type: ignore[attr-defined]
    box.clear()
    box.send_keys("a red circle", Keys.ENTER)
    status = driver.find_element(By.ID, "status")  # type: ignore[attr-defined]
    WebDriverWait(driver, WAIT_S).until(lambda _d: "error" in status.get_attribute("class"))
    assert "network down" in status.text and "searching" not in status.text

    shot = os.environ.get("PAGE_SCREENSHOT")
    if shot:  # docs/http.md's picture: PAGE_SCREENSHOT=docs/http-page.png pytest tests/gateway/test_page_e2e.py
        driver.get(f"{system.url}?q=a+red+circle&k=8")  # type: ignore[attr-defined]
        results(driver, status_has="a red circle")
        Path(shot).parent.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(shot)  # type: ignore[attr-defined]
