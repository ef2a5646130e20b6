"""`moai web` in a real browser: headless Chromium (Debian's ``chromium``) driven by Playwright.

The page is served on 127.0.0.1 at a port the OS picks (`BackgroundServer`). The browser clicks an example
scene, asks, waits for the streamed answer and the gate chart, and checks the answer against
`Engine.answer`; then uploads a file and types a question. A screenshot is saved (to
``$MOAI_WEB_SCREENSHOT`` when set: ``MOAI_WEB_SCREENSHOT=docs/figures/web.png pytest tests/test_web.py``
made the README's). Without the browser or Playwright the browser test is skipped, saying why.
"""

import os
import shutil
from pathlib import Path

import pytest
from PIL import Image

from moai.engine import Engine
from moai.web import answer_stream, examples

CHROMIUM = Path("/usr/bin/chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu"]


@pytest.fixture(scope="module")
def engine():
    return Engine.load()


def test_examples_are_bundled_scenes():
    rows = examples()
    assert len(rows) == 3
    for path, question in rows:
        assert Path(path).is_file() and question.endswith("?")


def test_answer_stream_ends_with_the_engines_answer_overlay_and_chart(engine):
    path, question = examples()[1]
    image = Image.open(path)
    steps = list(answer_stream(engine, image, question, max_new_tokens=16))
    text, picture, chart = steps[-1]
    assert text == engine.answer([path], [question])[0].text
    assert picture.size == image.size and chart is not None
    assert all(s[2] is None for s in steps[:-1])  # the chart comes once the answer is complete
    assert list(answer_stream(engine, None, question, 16)) == [
        ("Upload an image or click an example first.", None, None)
    ]
    assert list(answer_stream(engine, image, "  ", 16)) == [("Type a question first.", None, None)]


def _browser_missing() -> str | None:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright package is not installed (pip install playwright)"
    if not CHROMIUM.is_file():
        return f"{CHROMIUM} is missing (Debian: apt-get install chromium chromium-driver; make test tries)"
    return None


def test_the_page_answers_in_a_real_browser(engine, tmp_path):
    missing = _browser_missing()
    if missing:
        pytest.skip(f"browser test skipped: {missing}")
    from playwright.sync_api import sync_playwright

    from moai.serve.server import BackgroundServer
    from moai.web import build_app

    (path, question), upload = examples()[1], examples()[2][0]
    expected = engine.answer([path], [question])[0].text
    candidates = [
        "What color is the triangle?",
        "How many squares are there?",
        "Is there a green square in the image?",
    ]
    # a question whose answer differs from the first, so waiting for it shows the page answered again
    typed, expected_typed = next(
        (q, a.text) for q, a in zip(candidates, engine.answer([upload] * 3, candidates)) if a.text != expected
    )
    shot = tmp_path / "web.png"
    with BackgroundServer(build_app(engine)) as url, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(f"{url}/", timeout=120_000)
            page.get_by_text(question).first.click()  # the example row: image and question
            page.wait_for_function(
                "q => document.querySelector('#question textarea').value === q", arg=question, timeout=60_000
            )
            page.click("#ask")
            page.wait_for_function(
                "a => document.querySelector('#answer textarea').value === a", arg=expected, timeout=120_000
            )
            page.wait_for_selector(
                "#gates img", timeout=120_000
            )  # the chart, drawn once the answer is complete
            assert page.locator("#overlay img").count() >= 1
            page.screenshot(path=str(shot), full_page=True)

            page.set_input_files("#image input[type=file]", upload)
            page.fill("#question textarea", typed)
            page.click("#ask")
            page.wait_for_function(
                "a => document.querySelector('#answer textarea').value === a",
                arg=expected_typed,
                timeout=120_000,
            )
        finally:
            browser.close()
    assert shot.stat().st_size > 10_000
    if os.environ.get("MOAI_WEB_SCREENSHOT"):
        shutil.copy(shot, os.environ["MOAI_WEB_SCREENSHOT"])
