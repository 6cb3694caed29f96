"""The app in a real browser (Debian's chromium driven by Playwright): upload an object, draw the box with the
mouse, set a view and a prompt, generate, and get exactly the Pipeline's picture for the same settings; a bad box
shows the library's message in the page and the app keeps answering. Screenshots before / after generating go to
$APP_SCREENSHOTS (docs/app_before.png and docs/app_after.png were made with APP_SCREENSHOTS=docs)."""

import io
import os
import pathlib
import shutil
import socket

import numpy as np
import pytest
from PIL import Image

from customnet_jax import matting
from customnet_jax.app import session, ui

pytestmark = pytest.mark.slow
TIMEOUT_MS = 240_000


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def app_url():
    page = ui.build(str(session.DEMO_FOLDER))
    port = _free_port()
    ui.launch(page, port=port, block=False)
    yield f"http://127.0.0.1:{port}"
    page.close()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    executable = shutil.which("chromium")
    assert executable, "chromium is missing: `make install` installs it (apt-get install chromium)"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def object_file(tmp_path_factory):
    rgba = np.zeros((96, 80, 4), np.uint8)
    rgba[20:80, 15:65] = (220, 60, 40, 255)
    rgba[20:40, 15:65] = (40, 60, 220, 255)
    path = tmp_path_factory.mktemp("app") / "object.png"
    Image.fromarray(rgba).save(path)
    return path


def _set_number(page, selector: str, value) -> None:
    field = page.locator(selector)
    field.fill(str(value))
    field.press("Enter")


def _field(page, name: str) -> int:
    return int(float(page.locator(f"#{name} input").input_value()))


def test_generate_in_the_browser_equals_the_pipeline(app_url, browser, object_file, tmp_path):
    screenshots = pathlib.Path(os.environ.get("APP_SCREENSHOTS", tmp_path))
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(app_url)
    page.wait_for_selector("#canvas img", timeout=TIMEOUT_MS)
    page.set_input_files("#object input[type=file]", str(object_file))
    page.wait_for_timeout(1500)
    canvas = page.locator("#canvas img").bounding_box()  # the 64 px canvas shown larger: click two corners on it
    natural = page.evaluate("document.querySelector('#canvas img').naturalWidth")  # shown scaled down, never up
    shown = min(canvas["width"] / natural, canvas["height"] / natural, 1.0) * natural
    scale = shown / 64
    left = canvas["x"] + (canvas["width"] - shown) / 2
    top = canvas["y"] + (canvas["height"] - shown) / 2
    page.wait_for_timeout(1000)
    page.mouse.click(left + 10.5 * scale, top + 14.5 * scale)
    page.wait_for_timeout(500)
    page.mouse.click(left + 41.5 * scale, top + 53.5 * scale)
    page.wait_for_function("document.querySelector('#x1 input').value != '37'", timeout=TIMEOUT_MS)
    box = tuple(_field(page, n) for n in ui.BOX_FIELDS)
    assert abs(box[0] - 10) <= 1 and abs(box[1] - 14) <= 1 and abs(box[2] - 42) <= 1 and abs(box[3] - 54) <= 1
    _set_number(page, "#azimuth input[type=number]", 30)
    _set_number(page, "#steps input[type=number]", 10)
    page.locator("#prompt textarea").fill("on a striped green floor")
    page.screenshot(path=str(screenshots / "app_before.png"), full_page=True)
    page.click("#generate")
    page.wait_for_selector("#result img", timeout=TIMEOUT_MS)
    page.wait_for_function("document.querySelector('#message').innerText.includes('Done')", timeout=TIMEOUT_MS)
    page.screenshot(path=str(screenshots / "app_after.png"), full_page=True)
    shown = np.asarray(Image.open(io.BytesIO(page.request.get(
        page.locator("#result img").get_attribute("src")).body())).convert("RGB"))

    pipeline = session.load_pipeline(str(session.DEMO_FOLDER))
    cutout = matting.cut_out(object_file)
    assert cutout.method == "alpha"
    expected = pipeline(cutout.rgb, mask=cutout.mask, bbox=box, views=[(0.0, 30.0, 0.0)],
                        prompt="on a striped green floor", seed=0, steps=10, guidance=3.0).images[0, 0]
    np.testing.assert_array_equal(shown, expected)
    assert (shown != np.asarray(pipeline(cutout.rgb, mask=cutout.mask, bbox=box, views=[(0.0, 30.0, 0.0)],
                                         prompt="on a striped green floor", seed=1, steps=10,
                                         guidance=3.0).images[0, 0])).any()  # another seed: another picture
    page.close()


def test_bad_box_shows_the_error_and_the_app_keeps_answering(app_url, browser):
    page = browser.new_page()
    page.goto(app_url)
    page.wait_for_selector("#canvas img", timeout=TIMEOUT_MS)
    _set_number(page, "#x1 input", 300)
    page.click("#generate")
    page.wait_for_function("document.querySelector('#message').innerText.includes('outside')", timeout=TIMEOUT_MS)
    message = page.locator("#message").inner_text()
    assert "reaches outside the 64x64 canvas" in message and "Traceback" not in message
    _set_number(page, "#x1 input", 40)  # fixed: the page answers again (the preview clears the message)
    page.wait_for_function("!document.querySelector('#message').innerText.includes('outside')", timeout=TIMEOUT_MS)
    page.close()
