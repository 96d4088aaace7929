"""The chat page at / in headless Chromium (Debian's chromium and chromium-driver, driven by selenium):
a message typed, the answer streamed, the reasoning folded, the model and the speed shown."""

from __future__ import annotations

import os
import shutil

import pytest
from scripted_glm import build_scripted_glm

from dllama_py import Engine
from dllama_py.server import ApiServer, ServerOptions

webdriver = pytest.importorskip("selenium.webdriver")
CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
if not (CHROMIUM and DRIVER):
    if os.environ.get("CI"):  # CI installs them (.ci/run): missing there is a failure, not a skip
        pytest.fail("chromium and chromedriver are needed: apt-get install chromium chromium-driver", pytrace=False)
    pytest.skip("no chromium/chromedriver here (apt-get install chromium chromium-driver)", allow_module_level=True)

CHAINS = [["<|assistant|>", "<think>", "h", "m", "</think>", "O", "K", "<|user|>"]]


@pytest.fixture(scope="module")
def page_url(tmp_path_factory):
    with Engine(build_scripted_glm(tmp_path_factory.mktemp("page_glm"), CHAINS)) as eng:
        server = ApiServer(eng, port=0, options=ServerOptions(model_name="scripted-glm")).start()
        yield server.url + "/"
        server.stop()


@pytest.fixture(scope="module")
def browser():
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=DRIVER), options=options)
    yield driver
    driver.quit()


def test_a_typed_message_gets_a_streamed_answer(page_url, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(page_url)
    wait = WebDriverWait(browser, 30)
    wait.until(lambda d: d.find_element(By.ID, "model").text == "scripted-glm")
    box = browser.find_element(By.ID, "input")
    box.send_keys("Hi", Keys.ENTER)
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, ".assistant .answer")
               and d.find_element(By.CSS_SELECTOR, ".assistant .answer").text == "OK")
    wait.until(lambda d: "tok/s" in d.find_element(By.ID, "speed").text)
    assert browser.find_element(By.CSS_SELECTOR, ".user").text == "Hi"
    reasoning = browser.find_element(By.CSS_SELECTOR, ".assistant details.reasoning")
    assert reasoning.get_attribute("open") is None  # folded
    assert reasoning.get_attribute("textContent").endswith("hm")
    assert "6 tokens" in browser.find_element(By.ID, "speed").text
    # A second turn goes out with the history and streams its answer too.
    browser.find_element(By.ID, "input").send_keys("Hi", Keys.ENTER)
    wait.until(lambda d: [e.text for e in d.find_elements(By.CSS_SELECTOR, ".assistant .answer")] == ["OK", "OK"])
    assert not browser.find_elements(By.CSS_SELECTOR, ".error")
