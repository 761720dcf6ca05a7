"""`mmtune serve`: the web page, driven in headless Chromium as a person would use it."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import urllib.request

import pytest

from conftest import free_port, repo_env, tiny_llava_run

pytest.importorskip("gradio")
selenium = pytest.importorskip("selenium")
if not (shutil.which("chromium") and shutil.which("chromedriver")):
    # CI installs them (.ci/run), so there a missing browser is a failure, never a silent skip.
    if os.environ.get("CI"):
        pytest.fail("chromium and chromium-driver are missing: .ci/run must install them", pytrace=False)
    pytest.skip("needs Debian's chromium and chromium-driver (.ci/run installs them)", allow_module_level=True)

QUESTION = "what colour is the shape ?"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return tiny_llava_run(tmp_path_factory.mktemp("serve"), 8)


@pytest.fixture
def server(run):
    _, run_dir = run
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "mmtune.cli", "serve", str(run_dir), "--port", str(port),
                             "--max-new-tokens", "6"], env=repo_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + 180
    while True:
        try:
            urllib.request.urlopen(url, timeout=2)
            break
        except OSError:
            if proc.poll() is not None or time.time() > deadline:
                proc.kill()
                pytest.fail(f"mmtune serve did not start:\n{proc.stdout.read()}")
            time.sleep(1)
    yield url
    proc.terminate()
    proc.wait(timeout=30)


def _browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = shutil.which("chromium")
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1100,900"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)


def test_web_page_streams_the_answer_about_an_uploaded_image(run, server, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from mmtune.chat import ChatSession, Generation
    from mmtune.recipes.common import load_run

    data, run_dir = run
    image = data / "images" / "test_00000.png"
    cfg, model = load_run(run_dir)
    session = ChatSession(model, cfg, Generation(max_new_tokens=6))
    session.attach("image", image)
    expected = session.ask(QUESTION)
    assert expected, "precondition: the tiny model says something"

    driver = _browser()
    try:
        driver.get(server)
        wait = WebDriverWait(driver, 120)
        upload = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#image-input input[type=file]"))
        upload.send_keys(str(image))
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#image-input img"))  # the preview is shown
        driver.find_element(By.CSS_SELECTOR, "#question textarea").send_keys(QUESTION)
        driver.find_element(By.ID, "ask").click()
        answer = driver.find_element(By.CSS_SELECTOR, "#answer textarea")
        wait.until(lambda d: answer.get_attribute("value") == expected)
        driver.save_screenshot(str(tmp_path / "serve.png"))
        if os.environ.get("MMTUNE_SCREENSHOT"):  # to look at the page: a path to copy it to
            shutil.copy(tmp_path / "serve.png", os.environ["MMTUNE_SCREENSHOT"])
    finally:
        driver.quit()
    assert (tmp_path / "serve.png").stat().st_size > 10_000
