"""The MLflow UI in a real browser: a training run's page shows its description, metrics and plots.

Starts ``mlflow server`` on 127.0.0.1 (a free port) over the session's tracking store (one
training and one scoring run) and drives headless Chromium (Debian's ``chromium`` and
``chromium-driver``; ``.ci/run`` installs them) through Selenium. Screenshots go to
``tests/artifacts/`` (git-ignored); the test prints their paths.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest

from tests.conftest import local_server

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
SCREENSHOTS = Path(__file__).parent / "artifacts"
# The network is closed: without these Chromium stalls on updates, sync and first-run pages.
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1600,2000",
]

webdriver = pytest.importorskip("selenium.webdriver")
if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
    pytest.skip(f"{CHROMIUM} and {CHROMEDRIVER} are needed (apt-get install chromium chromium-driver)", allow_module_level=True)

from selenium.common.exceptions import (  # noqa: E402
    ElementClickInterceptedException,
    ElementNotInteractableException,
)
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402


@pytest.fixture(scope="module")
def server(trained_store, tmp_path_factory):
    """``mlflow server`` over the shared store; yields its base URL."""
    command = [
        "mlflow",
        "server",
        "--backend-store-uri",
        trained_store.uri,
        "--host",
        "127.0.0.1",
        "--port",
        "{port}",
        "--workers",
        "1",
    ]
    env = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # no background job runner: faster start, fewer processes
    with local_server(command, "/health", tmp_path_factory.mktemp("ui") / "server.log", env, cwd=trained_store.root) as base:
        yield base


@pytest.fixture(scope="module")
def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    profile = tempfile.mkdtemp(prefix="chromium-")
    options.add_argument(f"--user-data-dir={profile}")
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def _body(driver) -> str:
    return driver.find_element(By.TAG_NAME, "body").text


def _wait_text(driver, text: str, timeout: float = 90) -> None:
    WebDriverWait(driver, timeout).until(lambda d: text in _body(d), message=f"'{text}' never appeared")


def _click_text(driver, text: str) -> None:
    """Click the shown element with this text (the app also renders hidden copies, e.g. tooltips)."""

    def clicked(d) -> bool:
        for element in d.find_elements(By.XPATH, f"//*[normalize-space(text())='{text}']"):
            if element.is_displayed():
                d.execute_script("arguments[0].scrollIntoView({block: 'center'});", element)
                try:
                    element.click()
                    return True
                except (ElementNotInteractableException, ElementClickInterceptedException):
                    continue  # still animating into place or covered: try again
        return False

    WebDriverWait(driver, 30).until(clicked, message=f"no clickable '{text}'")


def _screenshot(driver, name: str) -> Path:
    SCREENSHOTS.mkdir(exist_ok=True)
    path = SCREENSHOTS / name
    driver.save_screenshot(str(path))
    print(f"screenshot: {path}")
    return path


def _run_url(base: str, trained_store, run_id: str) -> str:
    from mlflow.tracking import MlflowClient

    experiment = MlflowClient(trained_store.uri).get_run(run_id).info.experiment_id
    return f"{base}/#/experiments/{experiment}/runs/{run_id}"


def test_training_run_page_shows_description_metrics_and_plots(server, browser, trained_store):
    browser.get(_run_url(server, trained_store, trained_store.train_run_id))
    _wait_text(browser, "Training: pump version 1")
    text = _body(browser)
    assert "train pump pump.csv" in text  # the run name
    assert "Threshold" in text and "held-out normal error" in text  # the description's first lines
    assert "train pump.csv" in text and "Training" in text  # the logged dataset
    for metric in ("quality.rows_in", "1440"):
        assert metric in text
    _click_text(browser, "Show more")  # the whole description
    _wait_text(browser, "Normal period", timeout=30)
    assert "held out for the threshold" in _body(browser) and "Histogram with the threshold" in _body(browser)
    browser.find_element(By.XPATH, "//input[@placeholder='Search metrics']").send_keys("holdout_error.p99")
    _wait_text(browser, "holdout_error.p99", timeout=30)
    for close in browser.find_elements(By.CSS_SELECTOR, "button[aria-label='Close']"):  # the assistant's side panel
        if close.is_displayed():
            close.click()
    shot = _screenshot(browser, "run_page.png")
    assert shot.stat().st_size > 10_000

    _click_text(browser, "Artifacts")  # the tab: the single-page app switches without a reload
    _wait_text(browser, "threshold.json")
    _click_text(browser, "plots")
    for plot in ("training_curves.png", "holdout_errors.png", "scores.png"):
        _click_text(browser, plot)
        _wait_text(browser, f"plots/{plot}", timeout=30)
        WebDriverWait(browser, 30).until(
            lambda d: any(img.get_property("naturalWidth") > 300 for img in d.find_elements(By.TAG_NAME, "img")),
            message=f"{plot} was not shown as an image",
        )
    assert any(name.startswith("event_") for name in _body(browser).split())
    _screenshot(browser, "run_artifacts.png")


def test_scoring_run_page_shows_what_was_flagged(server, browser, trained_store):
    browser.get(_run_url(server, trained_store, trained_store.score_run_id))
    _wait_text(browser, "Scoring with pump version 1")
    text = _body(browser)
    assert "flagged in" in text and "model_version" in text and "input_digest" in text
    _click_text(browser, "Artifacts")
    _wait_text(browser, "anomalies.csv")
    assert "scores.png" in _body(browser)
