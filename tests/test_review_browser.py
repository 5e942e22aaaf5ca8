"""The review page in a real headless Chromium (Debian's ``chromium`` + ``chromium-driver``),
driven by Selenium: label three items by keyboard, undo one, and check the store's rows; a
planted ``<script>``/``onerror`` never runs; no console errors; a screenshot is kept in
``tests/artifacts/``."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from llmclf.backends.base import Hints
from llmclf.router import Router
from llmclf.service import ServiceSettings, create_app
from llmclf.store import Store
from llmclf.testing import KeywordStudent
from llmclf.testing.fake_provider import FakeProvider
from llmclf.types import Task
from tests.helpers import REPO, Server

webdriver = pytest.importorskip("selenium.webdriver")
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

ARTIFACTS = REPO / "tests" / "artifacts"
KEY = "s3cret-review"
PLANTED = "meh <script>document.title='PWNED';window.__pwned=1;console.error('pwned')</script>"
PLANTED_IMG = "meh <img src=x onerror=\"document.title='PWNED-IMG';window.__pwned=2\">"
TEXTS = ["meh film", "fine, I guess", "meh but fine", PLANTED, PLANTED_IMG]


def _exe(*names: str) -> str | None:
    for name in names:
        found = shutil.which(name) or (name if Path(name).exists() else None)
        if found:
            return found
    return None


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    chromium = _exe("chromium", "/usr/bin/chromium", "chromium-browser")
    driver_exe = _exe("chromedriver", "/usr/bin/chromedriver")
    if chromium is None or driver_exe is None:
        pytest.skip("chromium and chromium-driver are not installed (Debian: apt-get install -y "
                    "chromium chromium-driver)")  # fmt: skip
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-extensions", "--no-first-run", "--window-size=1280,1000",
                f"--user-data-dir={tmp_path / 'profile'}"):  # fmt: skip
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=opts, service=Service(driver_exe))
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def task() -> Task:
    # the shipped task's threshold is tuned for Gemma; these tests script scores around 0.5
    shipped = Task.from_yaml(REPO / "eval_sets" / "sst2" / "task.yaml")
    return shipped.model_copy(update={"threshold": 0.5})


@pytest.fixture
def queue(task: Task, store: Store) -> Store:
    """Fill the store's queue through a real router: a student, a fake LLM over HTTP."""
    with FakeProvider(rules={"meh": "negative"}, default="positive", confidence=0.6) as llm:
        cfg = {
            "backends": {"llm": {"spec": llm.spec(), "options": {"max_retries": 0}}},
            "cascade": {"student": "student", "escalate_to": "llm", "threshold": 0.8},
            "review": {"strategy": "margin", "threshold": 0.5},
        }
        student = KeywordStudent(task, {"meh": 0.55, "fine": 0.7, "great": 0.97})
        with Router.from_config(cfg, task=task, store=store,
                                backends={"student": student}) as router:  # fmt: skip
            router.predict_batch([*TEXTS, "a great film"], Hints(request_id="b1"))
    assert [r["text"] for r in store.review_list()] == TEXTS
    return store


def wait_text(driver: Any, css: str, text: str, timeout: float = 20) -> None:
    """Wait until the element's text holds ``text`` (read in the page: it is re-rendered)."""
    js = "const e = document.querySelector(arguments[0]); return e ? e.textContent : '';"
    WebDriverWait(driver, timeout).until(lambda d: text in d.execute_script(js, css))


def press(driver: Any, keys: str) -> None:
    webdriver.ActionChains(driver).send_keys(keys).perform()


def test_label_three_by_keyboard_undo_one_and_nothing_planted_runs(
    browser: Any, queue: Store, task: Task
) -> None:
    with FakeProvider(default="positive") as llm:
        router = Router.from_config(
            {"backends": {"llm": {"spec": llm.spec()}}, "fallbacks": ["llm"]}, task=task,
            store=queue,
        )  # fmt: skip
        app = create_app([router], ServiceSettings(api_keys=frozenset({KEY})),
                         review_store=queue)  # fmt: skip
        with Server(app) as srv:
            d = browser
            d.get(srv.url + "/review")
            key = WebDriverWait(d, 20).until(lambda d: d.find_element(By.ID, "apikey"))
            assert key.is_displayed() and d.switch_to.active_element == key
            press(d, KEY + "\n")  # keyboard only, from here on
            wait_text(d, "#counter", "done 0 · left 5")
            wait_text(d, "#item-text", "meh film")

            press(d, "2")  # meh film: the model said negative, the person says positive
            wait_text(d, "#status", "labelled positive")
            wait_text(d, "#item-text", "fine, I guess")
            press(d, "1")  # fine, I guess → negative
            wait_text(d, "#item-text", "meh but fine")
            press(d, "\n")  # Enter accepts the model's label
            wait_text(d, "#counter", "done 3 · left 2")
            press(d, "u")  # undo the last one
            wait_text(d, "#status", "undone")
            wait_text(d, "#counter", "done 2 · left 3")
            wait_text(d, "#item-text", "meh but fine")

            # the planted texts are shown as text, and never run
            press(d, "j")
            wait_text(d, "#item-text", "<script>")
            shown = d.execute_script("return document.getElementById('item-text').textContent")
            assert shown == PLANTED
            queue_texts = d.execute_script(
                "return [...document.querySelectorAll('#queue li')].map(li => li.textContent)"
            )
            assert any("onerror=" in t for t in queue_texts)
            assert d.execute_script("return window.__pwned === undefined") is True
            assert "PWNED" not in d.title
            planted = "#queue img, #current img, script:not([src])"
            assert d.find_elements(By.CSS_SELECTOR, planted) == []

            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            shot = ARTIFACTS / "review_page.png"
            assert d.save_screenshot(str(shot)) and shot.stat().st_size > 1000

            errors = [e for e in d.get_log("browser") if e.get("level") == "SEVERE"]
            assert errors == [], errors

    rows = {r["text"]: r for r in queue.review_list(status=None)}
    assert (rows["meh film"]["status"], rows["meh film"]["gold"]) == ("labelled", ["positive"])
    assert (rows["fine, I guess"]["status"], rows["fine, I guess"]["gold"]) == (
        "labelled", ["negative"]
    )
    undone = rows["meh but fine"]
    assert (undone["status"], undone["gold"], undone["decision"]) == ("pending", None, None)
    (decision,) = queue.review_decisions(undone["id"])
    # Enter accepted the model's label
    assert decision["gold"] == undone["prediction"]["labels"] and decision["undone"] is not None
    assert queue.count("review_decisions") == 3
    assert queue.review_counts("sst2") == {"pending": 3, "labelled": 2, "skipped": 0}


def test_multilabel_toggles_filters_and_bulk_accept_by_keyboard(browser: Any, store: Store) -> None:
    tags = {"name": "tags", "kind": "multilabel", "labels": ["joy", "anger", "surprise"]}
    for text, conf in [("what a day", 0.6), ("so angry", 0.55), ("oh wow", 0.95)]:
        store.review_add("tags", text, {"labels": ["joy"], "scores": {"joy": conf, "anger": 0.1,
                         "surprise": 0.3}, "confidence": conf, "route": ["llm"], "task": tags})
    with Server(create_review_app_for(store)) as srv:
        d = browser
        d.get(srv.url + "/review")  # no key needed: the page says so and asks for none
        wait_text(d, "#counter", "done 0 · left 3")
        wait_text(d, "#item-text", "what a day")
        press(d, "1")  # toggle joy on
        press(d, "3")  # toggle surprise on
        WebDriverWait(d, 10).until(lambda d: d.execute_script(
            "return [...document.querySelectorAll('.labels button[aria-pressed=true]')]"
            ".map(b => b.dataset.label).join(',')") == "joy,surprise")
        press(d, "1")  # and joy off again
        press(d, "1")  # and on
        press(d, "\n")
        wait_text(d, "#status", "labelled joy, surprise")
        press(d, "x")  # select "so angry"
        press(d, "j")
        press(d, "x")  # and "oh wow"
        press(d, "a")  # accept the model's label for both
        wait_text(d, "#status", "accepted 2")
        wait_text(d, "#counter", "done 3 · left 0")
        # a filter by confidence band, from the keyboard: focus the select, pick, leave it
        band = d.find_element(By.ID, "f-status")
        band.send_keys("all")
        wait_text(d, "#queue", "oh wow")
        errors = [e for e in d.get_log("browser") if e.get("level") == "SEVERE"]
        assert errors == [], errors
    golds = {r["text"]: r["gold"] for r in store.review_list(status="labelled")}
    assert golds == {"what a day": ["joy", "surprise"], "so angry": ["joy"], "oh wow": ["joy"]}


def create_review_app_for(store: Store) -> Any:
    from llmclf.service.app import create_review_app

    return create_review_app(store, ServiceSettings())
