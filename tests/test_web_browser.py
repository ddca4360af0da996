"""The review desk (``redis-llm web``) end to end, in a real headless browser.

Everything is real: a redis-server with the module (the shared ``server``),
the scripted OpenAI-compatible server (``api``), the web application as its
own process started by the ``redis-llm web`` command, and Debian's chromium
driven by Playwright. Experts sign in with Redis ACL users: alice (keys
``a:*``) and bob (keys ``b:*``).

Every page is screenshotted (1280x900, full page) into
``tests/artifacts/screenshots/``, or ``$SCREENSHOT_DIR`` when it is set.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import os
import re
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from openai_server import OpenAIServer
from redis_llm.testing import free_port

try:
    from playwright.sync_api import expect, sync_playwright
except ImportError:                                       # pragma: no cover
    if os.environ.get("CI"):
        raise
    pytest.skip("the playwright package is not installed", allow_module_level=True)

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
VIEWPORT = {"width": 1280, "height": 900}
SHOTS = Path(os.environ.get("SCREENSHOT_DIR") or ROOT / "tests" / "artifacts" / "screenshots")

EMBED_DIM = 8                                            # the api fixture's
USERS = {"alice": ("alice-pw", "a:*"), "bob": ("bob-pw", "b:*")}

# The product manual behind alice's search app a:ask: (source, page, text),
# and the questions each item answers (see manual_embedding).
MANUAL = [
    ("manual.pdf", 12, "Descaling: fill the water tank with 1 l of water and 50 ml of Aurora "
                       "descaler, then hold the Steam and Hot Water buttons together for 5 seconds. "
                       "The descaling cycle takes about 25 minutes.",
     ("How do I descale the Aurora X2?", "How much descaler does one descaling cycle need?")),
    ("manual.pdf", 8, "Brewing temperature: choose 88 °C to 96 °C in Settings > Brewing. "
                      "The factory setting is 92 °C.",
     ("What brewing temperature should I use?",)),
    ("manual.pdf", 31, "Error E4: the water tank is empty or not seated. Refill the tank and "
                       "push it down until it clicks.",
     ("What does error E4 mean?",)),
    ("warranty.pdf", 2, "The Aurora X2 has a two-year limited warranty from the date of "
                        "purchase. Keep your receipt.",
     ("How long is the warranty?",)),
    ("quickstart.pdf", 1, "Before the first use, rinse the water tank and run two cups of hot "
                          "water through the group head.",
     ("Can I make coffee right after unpacking the Aurora X2?",)),
]
# The questions asked of a:ask (records 1 to 5), with the model's answers.
ASKED = [
    ("Can I make coffee right after unpacking the Aurora X2?",
     "Rinse the water tank first and run two cups of hot water through the group head."),
    ("How long is the warranty?",
     "Two years from the date of purchase; keep the receipt."),
    ("What brewing temperature should I use?",
     "The factory setting is 92 °C; Settings > Brewing allows 88 °C to 96 °C."),
    ("What does error E4 mean?",
     "The water tank is empty or not seated properly."),
    ("How do I descale the Aurora X2?",
     "Fill the tank with 1 l of water and 50 ml of descaler, then hold Steam and Hot Water "
     "for 5 seconds."),
]
BOB_QUESTION = "When does Project Nightjar launch?"


# ---- helpers --------------------------------------------------------------------

def result(r, key: str, rid: int) -> dict[str, str]:
    """LLM.RESULT as read by the default user: a dict of strings."""
    reply = r.execute_command("LLM.RESULT", key, rid)
    assert reply is not None, f"no result {rid} in {key}"
    values = [v.decode() for v in reply]
    return dict(zip(values[0::2], values[1::2]))


def manual_embedding(questions) -> bytes:
    """An item's embedding: the mean of the scripted server's embeddings of
    the questions it answers, so that retrieval finds it for them, as a real
    embedding model would (the server's embeddings are hashes, not meaning)."""
    vectors = [OpenAIServer.embedding_for(q, EMBED_DIM) for q in questions]
    mean = [sum(column) / len(vectors) for column in zip(*vectors)]
    return struct.pack(f"<{EMBED_DIM}f", *mean)


def shot(page, name: str) -> None:
    """A full-page screenshot of what the browser shows."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def sign_in(page, user: str, password: str | None = None) -> None:
    page.goto("/login")
    page.fill("#login-user", user)
    page.fill("#login-password", USERS[user][0] if password is None else password)
    page.click("#login-submit")


def signed_in(page, user: str) -> None:
    sign_in(page, user)
    expect(page.locator("#user")).to_have_text(user)


def colours(page, selector: str) -> tuple[str, str]:
    """The text colour of an element and the background colour it is drawn on."""
    return tuple(page.eval_on_selector(selector, """node => {
        const colour = getComputedStyle(node).color;
        for (let n = node; n; n = n.parentElement) {
            const background = getComputedStyle(n).backgroundColor;
            if (background !== "rgba(0, 0, 0, 0)" && background !== "transparent") {
                return [colour, background];
            }
        }
        return [colour, "rgb(255, 255, 255)"];
    }"""))


def assert_legible(page, selector: str) -> None:
    expect(page.locator(selector)).to_be_visible()
    colour, background = colours(page, selector)
    assert colour != background, f"{selector}: {colour} text on {background}"


def row_ids(page) -> list[int]:
    return [int(v) for v in page.locator("tr[data-id]").evaluate_all(
        "rows => rows.map(row => row.dataset.id)")]


def posts_to(page, path: str) -> list:
    """A list that fills with the POST requests the page sends to ``path``."""
    sent = []
    page.on("request", lambda req: sent.append(req) if req.method == "POST"
            and req.url.split("?")[0].endswith(path) else None)
    return sent


# ---- processes: the browser and the web application ---------------------------------

@pytest.fixture(scope="module")
def browser():
    if not os.path.exists(CHROMIUM):
        reason = (f"{CHROMIUM} is missing: install Debian's chromium (apt-get install chromium) "
                  "to run the browser tests")
        if os.environ.get("CI"):
            pytest.fail(reason + " (CI is set, where chromium must be installed)")
        pytest.skip(reason)
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


class Web:
    def __init__(self, url: str, redis_url: str, process: subprocess.Popen, log: Path):
        self.url, self.redis_url, self.process, self.log = url, redis_url, process, log

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def _env() -> dict:
    path = [str(ROOT)] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])
    return {**os.environ, "PYTHONPATH": os.pathsep.join(path), "PYTHONUNBUFFERED": "1",
            "PYTHONIOENCODING": "utf-8"}


@pytest.fixture(scope="module")
def web(server, tmp_path_factory):
    """``redis-llm web`` serving the shared server, as a subprocess."""
    port = free_port()
    redis_url = f"redis://127.0.0.1:{server.port}"
    log = tmp_path_factory.mktemp("web") / "web.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "redis_llm.cli", "web", "--url", redis_url, "--port", str(port)],
            cwd=ROOT, env=_env(), stdout=out, stderr=subprocess.STDOUT)
    desk = Web(f"http://127.0.0.1:{port}", redis_url, process, log)
    try:
        deadline = time.monotonic() + 20
        while True:
            if process.poll() is not None:
                pytest.fail(f"redis-llm web exited with {process.returncode}:\n{desk.output()}")
            try:
                with urllib.request.urlopen(desk.url + "/login", timeout=2) as reply:
                    if reply.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"redis-llm web did not answer within 20 s:\n{desk.output()}")
            time.sleep(0.05)
        yield desk
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    assert "Traceback" not in desk.output(), desk.output()


@pytest.fixture
def page(browser, web):
    """A fresh browser context (no cookies) and page on the desk; fails the
    test on an uncaught script error or a Content-Security-Policy violation."""
    context = browser.new_context(base_url=web.url, viewport=VIEWPORT, locale="en-US",
                                  timezone_id="UTC", accept_downloads=True)
    context.set_default_timeout(10_000)
    tab = context.new_page()
    problems = []
    tab.on("pageerror", lambda exc: problems.append(f"script error: {exc}"))
    tab.on("console", lambda msg: problems.append(f"console: {msg.text}")
           if "Content Security Policy" in msg.text else None)
    yield tab
    context.close()
    assert not problems, problems
    assert web.process.poll() is None, f"redis-llm web died:\n{web.output()}"


# ---- data: two tenants --------------------------------------------------------------

@pytest.fixture
def desk(r, api):
    """ACL users alice (~a:*) and bob (~b:*) and their apps, made by the
    default user ``r``:

    * ``a:llm``, ``a:docs`` (the product manual, meta source/page) and
      ``a:ask``, a search app with results 1-5 (ASKED, none reviewed);
    * ``a:faq``, a simple app with a variable (no results);
    * ``b:llm`` and ``b:secret``, a simple app with bob's result 1.
    """
    for user, (password, keys) in USERS.items():
        r.execute_command("ACL", "SETUSER", user, "reset", "on", f">{password}", f"~{keys}",
                          "+@all")
    params = json.dumps({"base_url": api.url})
    for llm in ("a:llm", "b:llm"):
        assert r.execute_command("LLM.CREATE-LLM", llm, "--PARAMS", params) == 1
    assert r.execute_command("LLM.CREATE-VECTOR-STORE", "a:docs", "--LLM", "a:llm") == 1
    assert api.dim == EMBED_DIM
    for source, number, text, questions in MANUAL:
        r.execute_command("LLM.ADD", "a:docs", "--EMBEDDING-BLOB", manual_embedding(questions),
                          "--META", json.dumps({"source": source, "page": number}), text)
    assert r.execute_command("LLM.CREATE-SEARCH", "a:ask", "--LLM", "a:llm",
                             "--VECTOR-STORE", "a:docs") == 1
    assert r.execute_command("LLM.CREATE-APP", "a:faq", "--LLM", "a:llm", "--PROMPT",
                             "You are the Aurora X2 support assistant. Answer {{customer}}: "
                             "{{input}}") == 1
    assert r.execute_command("LLM.CREATE-APP", "b:secret", "--LLM", "b:llm",
                             "--PROMPT", "{{input}}") == 1
    for question, answer in ASKED:
        api.script(answer)
        assert r.execute_command("LLM.RUN", "a:ask", "--TAGS", "manual", question) \
            == answer.encode()
    api.script("Internal only: the launch is planned for the second quarter.")
    r.execute_command("LLM.RUN", "b:secret", BOB_QUESTION)
    yield r
    r.execute_command("ACL", "DELUSER", *USERS)


# ---- 1. signing in ---------------------------------------------------------------

def test_sign_in_with_acl_user_shows_name_and_own_apps_and_wrong_password_is_refused(
        page, web, desk):
    page.goto("/")
    page.wait_for_url(re.compile(r"/login\?next="))        # not signed in: the login page
    expect(page.locator("#login-submit")).to_be_visible()
    shot(page, "login")

    # A wrong password: the clear message, the typed name kept, and no session.
    with page.expect_response(lambda resp: resp.request.method == "POST"
                              and "/login" in resp.url) as info:
        sign_in(page, "alice", "not-her-password")
    assert info.value.status == 401
    expect(page.locator("#error")).to_have_text("Wrong user name or password.")
    expect(page.locator("#login-user")).to_have_value("alice")
    expect(page.locator("#user")).to_have_count(0)
    assert not [c for c in page.context.cookies() if c["name"] == "llm_desk"]
    shot(page, "login-wrong-password")
    page.goto("/")
    page.wait_for_url(re.compile(r"/login\?next="))
    # An unknown user gets the same message (nothing tells which part was wrong).
    sign_in(page, "mallory", "alice-pw")
    expect(page.locator("#error")).to_have_text("Wrong user name or password.")

    signed_in(page, "alice")
    assert page.url == web.url + "/"                       # the apps page
    expect(page.locator("h1")).to_have_text("Apps")
    rows = page.locator("tr[data-app]")
    expect(rows).to_have_count(2)
    assert rows.evaluate_all("rows => rows.map(row => row.dataset.app)") == ["a:ask", "a:faq"]
    ask = page.locator('tr[data-app="a:ask"] td')
    expect(ask.nth(1)).to_have_text("search")
    expect(ask.nth(2)).to_have_text("5")                   # results
    expect(ask.nth(4)).to_have_text("0")                   # reviewed
    expect(page.locator('tr[data-app="a:faq"] td').nth(1)).to_have_text("app")
    cookie = [c for c in page.context.cookies() if c["name"] == "llm_desk"]
    assert len(cookie) == 1 and cookie[0]["httpOnly"] and cookie[0]["value"]
    assert "alice-pw" not in page.content() and "alice-pw" not in cookie[0]["value"]
    shot(page, "apps")


# ---- 2. tenants ----------------------------------------------------------------

def test_other_tenants_apps_are_invisible_and_their_pages_are_refused_with_noperm(
        browser, web, page, desk):
    # Bob sees his app (so there is something to hide) and none of alice's.
    bob = browser.new_context(base_url=web.url, viewport=VIEWPORT)
    try:
        bob_page = bob.new_page()
        signed_in(bob_page, "bob")
        assert bob_page.locator("tr[data-app]").evaluate_all(
            "rows => rows.map(row => row.dataset.app)") == ["b:secret"]
        bob_page.goto("/results?app=b:secret")
        expect(bob_page.locator("tr[data-id]")).to_have_count(1)
        expect(bob_page.locator("#results")).to_contain_text(BOB_QUESTION)
    finally:
        bob.close()

    signed_in(page, "alice")
    expect(page.locator("tr[data-app]")).to_have_count(2)
    expect(page.locator('tr[data-app="b:secret"]')).to_have_count(0)
    assert "b:secret" not in page.content()

    for path in ("/review?app=b:secret", "/results?app=b:secret", "/dashboard?app=b:secret",
                 "/record?app=b:secret&id=1", "/results?app=b:secret&q=Nightjar"):
        reply = page.goto(path)
        assert reply.status == 403, (path, reply.status)
        expect(page.locator("#error")).to_contain_text("NOPERM")
        expect(page.locator("h1")).to_have_text("Redis refused")
        assert "Nightjar" not in page.inner_text("main"), path
        assert page.locator("tr[data-id], #record, svg.chart").count() == 0, path
    shot(page, "noperm")
    for path in ("/export?app=b:secret&format=jsonl", "/record.json?app=b:secret&id=1"):
        reply = page.request.get(path)
        assert reply.status == 403, (path, reply.status)
        assert "Nightjar" not in reply.text() and "NOPERM" in reply.text(), path
    # Reviewing bob's result is refused too, and changes nothing.
    before = result(desk, "b:secret", 1)
    page.goto("/review?app=a:ask")
    csrf = page.locator('input[name="csrf"]').first.input_value()
    reply = page.request.post("/review", form={"csrf": csrf, "app": "b:secret", "id": "1",
                                               "answer": "hijacked", "score": "99"})
    assert reply.status == 403 and "NOPERM" in reply.text()
    assert result(desk, "b:secret", 1) == before


# ---- 3. the review queue ------------------------------------------------------------

def test_review_queue_shows_the_result_and_ctrl_enter_stores_the_review_alt_s_skips(page, desk):
    signed_in(page, "alice")
    page.click('tr[data-app="a:ask"] a:text-is("Review")')
    page.wait_for_url(re.compile(r"/review\?app=a(:|%3A)ask$"))
    expect(page.locator("h1")).to_have_text("Review queue")

    # The newest unreviewed result, with the facts an expert weighs.
    stored = result(desk, "a:ask", 5)
    question, answer = ASKED[4]
    expect(page.locator("#record-id")).to_have_text("5")
    expect(page.locator("#record-question")).to_have_text(question)
    expect(page.locator("#record-answer")).to_have_text(answer)
    expect(page.locator("#record-model")).to_have_text("gpt-3.5-turbo")
    expect(page.locator("#record-latency")).to_have_text(f"{stored['latency_ms']} ms")
    expect(page.locator("#record-state")).to_have_text("done")
    matches = json.loads(stored["matches"])
    assert len(matches) == 3                                # the default --K
    rows = page.locator("#sources tbody tr")
    expect(rows).to_have_count(len(matches))
    for n, match in enumerate(matches):
        cells = rows.nth(n).locator("td")
        expect(cells.nth(1)).to_have_text(match["source"])
        expect(cells.nth(2)).to_have_text(str(match["page"]))
        expect(cells.nth(4)).to_have_text(match["content"])
        assert (match["source"], match["page"], match["content"]) in \
            [item[:3] for item in MANUAL]
    assert (matches[0]["source"], matches[0]["page"]) == ("manual.pdf", 12)  # the nearest
    # The answer to review starts as the model's answer.
    expect(page.locator("#review-answer")).to_have_value(answer)

    reviewed = ("Fill the tank with 1 l of water and 50 ml of Aurora descaler, hold Steam and "
                "Hot Water for 5 seconds; the cycle takes about 25 minutes.")
    page.fill("#review-answer", reviewed)
    page.fill("#review-score", "97")
    expect(page.locator("#score-band")).to_have_text("a known fact")
    assert_legible(page, "#score-band")
    page.fill("#review-notes", "Checked against manual.pdf, page 12.")
    shot(page, "review")

    with page.expect_request(lambda req: req.method == "POST" and req.url.endswith("/review")):
        page.locator("#review-notes").press("Control+Enter")
    expect(page.locator(".flash.ok")).to_have_text("Reviewed result 5: 97, a known fact.")
    rec = result(desk, "a:ask", 5)
    assert rec["reviewed_answer"] == reviewed
    assert float(rec["reviewed_score"]) == 97
    assert rec["reviewed_notes"] == "Checked against manual.pdf, page 12."
    assert rec["reviewer"] == "alice"
    assert rec["answer"] == answer                          # the model's answer is kept

    # The queue moved on to the next unreviewed result; Alt+S skips it.
    expect(page.locator("#record-id")).to_have_text("4")
    expect(page.locator("#record-question")).to_have_text(ASKED[3][0])
    # desk.js binds the shortcut once the page has loaded: on a loaded
    # machine the key could otherwise come first.
    page.wait_for_load_state("load")
    with page.expect_navigation(url=re.compile(r"skip=4$")):
        page.keyboard.press("Alt+s")
    expect(page.locator("#record-id")).to_have_text("3")
    expect(page.locator(".hint").first).to_contain_text("1 skipped")
    assert result(desk, "a:ask", 4)["reviewed_score"] == ""  # skipping reviews nothing

    # Reviewing after a skip keeps the skip: the queue goes on to 2, not back to 4.
    page.fill("#review-score", "85")
    expect(page.locator("#score-band")).to_have_text("confident")
    page.locator("#review-answer").press("Control+Enter")
    expect(page.locator(".flash.ok")).to_have_text("Reviewed result 3: 85, confident.")
    expect(page.locator("#record-id")).to_have_text("2")
    assert float(result(desk, "a:ask", 3)["reviewed_score"]) == 85
    assert result(desk, "a:ask", 3)["reviewed_answer"] == ASKED[2][1]
    assert result(desk, "a:ask", 3)["reviewer"] == "alice"


# ---- 4. invalid input -----------------------------------------------------------------

def test_invalid_score_is_refused_by_the_page_and_by_the_server_keeping_the_typed_answer(
        page, desk):
    signed_in(page, "alice")
    page.goto("/review?app=a:ask")
    expect(page.locator("#record-id")).to_have_text("5")
    url = page.url
    before = result(desk, "a:ask", 5)
    sent = posts_to(page, "/review")
    typed = "Descale every three months with hard water; the cycle takes 25 minutes."
    page.fill("#review-answer", typed)
    valid = lambda: page.eval_on_selector("#review-score", "e => e.validity.valid")  # noqa: E731

    # An empty score, then 150: the browser does not send the form.
    page.fill("#review-score", "")
    page.click("#review-submit")
    assert not valid()
    assert page.eval_on_selector("#review-score", "e => e.validity.valueMissing")
    page.fill("#review-score", "150")
    expect(page.locator("#score-band")).to_have_text("The score must be from 0 to 100.")
    assert_legible(page, "#score-band")
    page.click("#review-submit")
    page.locator("#review-score").press("Control+Enter")
    assert not valid()
    assert page.eval_on_selector("#review-score", "e => e.validity.rangeOverflow")
    # ... and after a round trip to the page, still nothing was sent.
    assert page.evaluate("() => document.readyState") == "complete"
    assert sent == [] and page.url == url
    expect(page.locator("#review-answer")).to_have_value(typed)
    assert result(desk, "a:ask", 5) == before
    shot(page, "review-invalid")

    # Without the page's constraints, desk.js still checks the score on submit.
    page.evaluate("""() => {
        const form = document.getElementById("review-form");
        form.noValidate = true;
        for (const name of ["required", "min", "max"]) {
            document.getElementById("review-score").removeAttribute(name);
        }
        document.getElementById("review-answer").removeAttribute("required");
    }""")
    page.click("#review-submit")
    assert page.evaluate("() => document.readyState") == "complete"
    assert sent == [] and page.url == url

    # Bypassing every check on the page: the server refuses, with the message.
    for score, message in (("150", "The score must be from 0 to 100, not 150."),
                           ("", "Give a score from 0 to 100.")):
        page.fill("#review-score", score)
        with page.expect_navigation() as nav:
            page.evaluate("() => HTMLFormElement.prototype.submit.call("
                          "document.getElementById('review-form'))")
        assert nav.value.status == 400
        expect(page.locator("#error")).to_have_text(message)
        expect(page.locator("#review-answer")).to_have_value(typed)
        expect(page.locator("#review-score")).to_have_value(score)
        expect(page.locator("#record-id")).to_have_text("5")
        assert result(desk, "a:ask", 5) == before
        if score:
            shot(page, "review-refused")
    assert len(sent) == 2

    # The kept form is still good for a valid review.
    page.fill("#review-score", "90")
    page.click("#review-submit")
    expect(page.locator(".flash.ok")).to_have_text("Reviewed result 5: 90, confident.")
    rec = result(desk, "a:ask", 5)
    assert rec["reviewed_answer"] == typed and float(rec["reviewed_score"]) == 90


# ---- 5. results: filters and pages -------------------------------------------------------

# LLM.RECORDs of agents into a:faq (ids 1-7): question, answer, model, tag, session.
AGENT_RESULTS = [
    ("How do I descale the Aurora X2?", "Run the descaling program with 50 ml of descaler.",
     "gpt-4o-mini", "maintenance", "chat-1001"),
    ("What does error E4 mean?", "The water tank is empty or not seated.",
     "gpt-4o-mini", "errors", "chat-1001"),
    ("How often should I descale?", "Every 3 months with hard water, every 6 with soft water.",
     "llama-3.1-8b", "maintenance", "chat-1002"),
    ("Is the warranty valid outside the EU?", "Yes, worldwide, with the receipt.",
     "llama-3.1-8b", "warranty", "chat-1003"),
    ("Which grind size works best?", "Start fine: setting 4 of 10.",
     "gpt-4o-mini", "brewing", "chat-1003"),
    ("Can I froth oat milk with the steam wand?", "Yes; barista oat milk froths best.",
     "mistral-7b", "brewing", "chat-1004"),
    ("What does error E7 mean?", "The boiler overheated: unplug it and wait 30 minutes.",
     "mistral-7b", "errors", "chat-1004"),
]
# Reviews by the default user: id -> (reviewed answer, score).
AGENT_REVIEWS = {1: ("Use the descaling program: 1 l of water and 50 ml of descaler.", 97),
                 2: ("The water tank is empty or not pushed down until it clicks.", 85),
                 3: ("Every 3 months with hard water, every 6 months with soft water.", 70),
                 4: ("Only in the EU; elsewhere ask the seller.", 40),
                 7: ("The boiler overheated: unplug it and let it cool for 30 minutes.", 90)}


def filtered(page, **fields) -> list[int]:
    """Fill the filter form of a:faq's results page, send it, and return the rows' ids."""
    page.goto("/results?app=a:faq")
    for name, value in fields.items():
        target = page.locator(f"#filter-{name}")
        if name in ("state", "reviewed"):
            target.select_option(value)
        else:
            target.fill(value)
    with page.expect_navigation():
        page.click("#filter-submit")
    expect(page.locator("#results, #no-results, #error").first).to_be_visible()
    return row_ids(page)


def test_results_filters_by_text_review_model_tag_session_score_and_date_and_pages(page, desk):
    for question, answer, model, tag, session in AGENT_RESULTS:
        desk.execute_command("LLM.RECORD", "a:faq", "--QUESTION", question, "--ANSWER", answer,
                             "--MODEL", model, "--LATENCY", 600 + 37 * len(question),
                             "--TAGS", f"{tag},agent", "--SESSION", session)
    for rid, (answer, score) in AGENT_REVIEWS.items():
        desk.execute_command("LLM.REVIEW", "a:faq", rid, "--ANSWER", answer, "--SCORE", score)
    signed_in(page, "alice")

    page.goto("/results?app=a:faq")
    assert row_ids(page) == [7, 6, 5, 4, 3, 2, 1]          # newest first
    expect(page.locator("#page-next")).to_have_count(0)
    row = page.locator('tr[data-id="7"] td')
    expect(row.nth(2)).to_have_text("done")
    expect(row.nth(4)).to_have_text(AGENT_REVIEWS[7][0])   # the reviewed answer is shown
    expect(row.nth(5)).to_have_text("mistral-7b")
    expect(row.nth(7)).to_have_text("90")
    assert_legible(page, 'tr[data-id="7"] span.score')   # white on the band's colour
    shot(page, "results")

    assert filtered(page, q="DESCALE") == [3, 1]           # question, ignoring case
    assert filtered(page, q="clicks") == [2]                # in the reviewed answer
    assert filtered(page, q="Project Nightjar") == []
    expect(page.locator("#no-results")).to_have_text("No result matches.")
    assert filtered(page, reviewed="yes") == [7, 4, 3, 2, 1]
    assert filtered(page, reviewed="no") == [6, 5]
    assert filtered(page, model="llama-3.1-8b") == [4, 3]
    assert filtered(page, tag="errors") == [7, 2]
    assert filtered(page, session="chat-1004") == [7, 6]
    assert filtered(page, min="80", max="94") == [7, 2]
    assert filtered(page, min="95") == [1]
    assert filtered(page, max="69.5") == [4]
    assert filtered(page, model="gpt-4o-mini", reviewed="no") == [5]
    assert filtered(page, tag="maintenance", state="done", q="hard water") == [3]
    today = dt.datetime.now(dt.timezone.utc).date()
    assert filtered(page, **{"from": today.isoformat()}) == [7, 6, 5, 4, 3, 2, 1]
    assert filtered(page, to=(today - dt.timedelta(days=1)).isoformat()) == []
    # The form shows the filters that made the page.
    filtered(page, model="mistral-7b", reviewed="yes")
    expect(page.locator("#filter-model")).to_have_value("mistral-7b")
    expect(page.locator("#filter-reviewed")).to_have_value("yes")
    assert row_ids(page) == [7]
    shot(page, "results-filtered")
    # Filters the server refuses: the message, and no rows.
    assert filtered(page, min="90", max="10") == []
    expect(page.locator("#error")).to_have_text("The minimum score is above the maximum score.")

    # Paging: 30 tickets and 5 internal notes; the tag filter keeps across pages.
    issues = ["the grinder is noisy", "the steam wand drips", "error E4 after refilling",
              "the crema is thin", "the display stays dark"]
    ticket_ids = []
    for n in range(35):
        internal = n % 7 == 3
        rid = desk.execute_command(
            "LLM.RECORD", "a:faq", "--QUESTION",
            f"{'Internal note' if internal else 'Ticket'} #{4100 + n}: {issues[n % 5]}",
            "--ANSWER", "See manual.pdf, troubleshooting.", "--MODEL", "gpt-4o-mini",
            "--TAGS", "internal" if internal else "ticket")
        if not internal:
            ticket_ids.append(rid)
    assert len(ticket_ids) == 30
    newest = ticket_ids[::-1]
    assert filtered(page, tag="ticket") == newest[:25]
    expect(page.locator("#page-prev")).to_have_count(0)
    page.click("#page-next")
    page.wait_for_url(re.compile(r"page=2"))
    assert row_ids(page) == newest[25:]
    expect(page.locator("#filter-tag")).to_have_value("ticket")
    expect(page.locator("#page-next")).to_have_count(0)
    expect(page.locator(".pager")).to_contain_text("page 2")
    page.click("#page-prev")
    page.wait_for_url(re.compile(r"page=1"))
    assert row_ids(page) == newest[:25]


# ---- 6. the dashboard ------------------------------------------------------------------

def cli_export(web, app: str, fmt: str, reviewed: bool) -> bytes:
    """What ``redis-llm export`` writes (connecting as the default user)."""
    done = subprocess.run(
        [sys.executable, "-m", "redis_llm.cli", "export", app, "--url", web.redis_url,
         "--format", fmt] + (["--reviewed"] if reviewed else []),
        cwd=ROOT, env=_env(), capture_output=True, timeout=30)
    assert done.returncode == 0, done.stderr.decode()
    return done.stdout


def test_dashboard_charts_render_with_the_counts_and_exports_equal_the_cli_export(
        page, web, desk):
    # a:ask: results 1-5 by gpt-3.5-turbo, 6-7 recorded by an agent on llama-3.1-8b.
    desk.execute_command("LLM.RECORD", "a:ask", "--QUESTION", "Does the Aurora X2 fit under "
                         "a 40 cm cabinet?", "--ANSWER", "Yes: it is 36 cm tall.",
                         "--MODEL", "llama-3.1-8b", "--LATENCY", 1450, "--TAGS", "agent")
    desk.execute_command("LLM.RECORD", "a:ask", "--QUESTION", "Can I use pre-ground coffee?",
                         "--ANSWER", "Yes, with the pressurised basket.", "--MODEL",
                         "llama-3.1-8b", "--LATENCY", 1210, "--TAGS", "agent")
    for rid, score in ((5, 97), (4, 85), (3, 70), (2, 40), (7, 99)):
        desk.execute_command("LLM.REVIEW", "a:ask", rid, "--ANSWER",
                             result(desk, "a:ask", rid)["answer"], "--SCORE", score,
                             "--NOTES", "checked against the manual")
    signed_in(page, "alice")
    page.click('tr[data-app="a:ask"] a:text-is("Dashboard")')
    page.wait_for_url(re.compile(r"/dashboard\?"))
    expect(page.locator("#sum-records")).to_have_text("7")
    expect(page.locator("#sum-reviewed")).to_have_text("5")
    expect(page.locator("#sum-done")).to_have_text("7")
    expect(page.locator("#sum-mean")).to_have_text("78.2")  # (97+85+70+40+99)/5

    for name in ("over-time", "bands", "model-score", "model-latency", "model-tokens"):
        chart = page.locator(f'svg.chart[data-chart="{name}"]')
        expect(chart).to_have_count(1)
        expect(chart).to_be_visible()
        box = chart.bounding_box()
        assert box and box["width"] > 100 and box["height"] > 50, (name, box)
        bars = chart.locator("rect.bar")
        assert bars.count() > 0, name
        first = bars.first.bounding_box()
        assert first and first["width"] > 0 and first["height"] > 0, (name, first)

    def values(name: str, selector: str = "rect.bar") -> list[float]:
        return [float(v) for v in page.locator(f'svg.chart[data-chart="{name}"] {selector}')
                .evaluate_all("bars => bars.map(bar => bar.dataset.value)")]
    # The bands, lowest first: not confident, somewhat confident, confident, a known fact.
    assert values("bands") == [1, 1, 1, 2]
    # Over time (per hour): every result and every reviewed result is in a column.
    assert sum(values("over-time", "rect.bar.series-0")) == 7
    assert sum(values("over-time", "rect.bar.series-1")) == 5
    assert max(values("over-time", "rect.bar.series-0")) > 0
    # Per model, sorted by name: gpt-3.5-turbo, then llama-3.1-8b.
    assert values("model-score") == [73, 99]                # (97+85+70+40)/4 and 99
    assert values("model-latency")[1] == (1450 + 1210) / 2
    assert values("model-tokens")[0] > 0
    shot(page, "dashboard")

    # Per day: one column pair holds everything (the results were just made).
    page.click('.intervals a:text-is("day")')
    page.wait_for_url(re.compile(r"interval=day"))
    assert values("over-time", "rect.bar.series-0") == [7]
    assert values("over-time", "rect.bar.series-1") == [5]

    for link, fmt, reviewed, name in (("export-jsonl", "jsonl", False, "a_ask.jsonl"),
                                      ("export-csv", "csv", False, "a_ask.csv"),
                                      ("export-reviewed-jsonl", "jsonl", True,
                                       "a_ask-reviewed.jsonl"),
                                      ("export-reviewed-csv", "csv", True, "a_ask-reviewed.csv")):
        with page.expect_download() as info:
            page.click(f"#{link}")
        download = info.value
        assert download.failure() is None
        assert download.suggested_filename == name
        content = Path(download.path()).read_bytes()
        assert content == cli_export(web, "a:ask", fmt, reviewed), link
        text = content.decode("utf-8")
        if fmt == "jsonl":
            ids = [json.loads(line)["id"] for line in text.splitlines()]
        else:
            ids = [int(row["id"]) for row in csv.DictReader(io.StringIO(text))]
        assert ids == ([7, 5, 4, 3, 2] if reviewed else [7, 6, 5, 4, 3, 2, 1]), link
        assert "92 °C" in text, link                        # UTF-8 both ways


# ---- 7. ask ----------------------------------------------------------------------------

def test_ask_async_shows_pending_then_the_answer_without_a_reload_and_sync_lands_on_record(
        page, api, desk):
    signed_in(page, "alice")
    page.click('tr[data-app="a:ask"] a:text-is("Ask")')
    page.wait_for_url(re.compile(r"/ask\?app="))
    expect(page.locator("#ask-async")).to_be_checked()      # the default mode
    question = "How much descaler does one descaling cycle need?"
    page.fill("#ask-input", question)
    page.fill("#ask-tags", "web, descaling")
    shot(page, "ask")

    # --ASYNC, with a slow model: the record page follows the result.
    answer = "50 ml of Aurora descaler in 1 l of water (manual.pdf, page 12)."
    api.delay(0.8, times=2)                                 # the embedding, then the chat
    api.script(answer)
    loads = []
    page.on("load", lambda _: loads.append(page.url))
    with page.expect_navigation(url=re.compile(r"/record\?")):
        page.click("#ask-submit")
    rid = int(re.search(r"[?&]id=(\d+)", page.url).group(1))
    assert rid == 6
    record_url = page.url
    expect(page.locator("#record-state")).to_have_text(re.compile(r"^(pending|running)$"))
    expect(page.locator("#watching")).to_be_visible()
    expect(page.locator("#record[data-watch]")).to_have_count(1)
    expect(page.locator("#record-question")).to_have_text(question)
    expect(page.locator("#review-form")).to_have_count(0)
    assert result(desk, "a:ask", rid)["state"] in ("pending", "running")
    shot(page, "record-running")

    expect(page.locator("#record-state")).to_have_text("done", timeout=15_000)
    expect(page.locator("#record-answer")).to_have_text(answer)
    expect(page.locator("#review-form")).to_be_visible()    # desk.js reloaded the page itself
    expect(page.locator("#watching")).to_have_count(0)
    expect(page.locator("#record[data-watch]")).to_have_count(0)
    assert page.url == record_url
    rec = result(desk, "a:ask", rid)
    assert rec["state"] == "done" and rec["answer"] == answer and rec["tags"] == "web,descaling"
    expect(page.locator("#sources tbody tr")).to_have_count(3)
    expect(page.locator("#sources tbody tr").first).to_contain_text("manual.pdf")
    expect(page.locator("#sources tbody tr").first.locator("td").nth(2)).to_have_text("12")
    page.fill("#review-score", "95")
    expect(page.locator("#score-band")).to_have_text("a known fact")
    page.fill("#review-notes", "Matches manual.pdf, page 12.")
    shot(page, "record")
    # A review from the record page comes back to it.
    page.click("#review-submit")
    page.wait_for_url(record_url)
    expect(page.locator(".flash.ok")).to_have_text("Reviewed result 6: 95, a known fact.")
    expect(page.locator("#reviewed-score")).to_have_text("95")
    expect(page.locator("#reviewed")).to_contain_text("by alice")
    expect(page.locator("#review-form h2")).to_have_text("Edit the review")
    expect(page.locator("#review-score")).to_have_value("95")
    rec = result(desk, "a:ask", rid)
    assert float(rec["reviewed_score"]) == 95 and rec["reviewer"] == "alice"
    shot(page, "record-reviewed")

    # Waiting for the answer: the record page of the new result, already done.
    # The simple app a:faq takes its variable from the form.
    page.goto("/ask?app=a:faq")
    page.check("#ask-sync")
    page.fill("#ask-input", "Can I put the drip tray in the dishwasher?")
    page.fill("#ask-vars", "not json")
    page.click("#ask-submit")
    expect(page.locator("#error")).to_contain_text("Variables must be a JSON object")
    expect(page.locator("#ask-input")).to_have_value("Can I put the drip tray in the dishwasher?")
    expect(page.locator("#ask-sync")).to_be_checked()
    page.fill("#ask-vars", '{"customer": "Dana"}')
    api.script("Yes, the drip tray and its grid are dishwasher safe.")
    with page.expect_navigation(url=re.compile(r"/record\?")):
        page.click("#ask-submit")
    assert re.search(r"[?&]id=1(&|$)", page.url), page.url
    expect(page.locator("#record-state")).to_have_text("done")
    expect(page.locator("#record-answer")).to_have_text(
        "Yes, the drip tray and its grid are dishwasher safe.")
    expect(page.locator("#record-question")).to_have_text(
        "Can I put the drip tray in the dishwasher?")
    expect(page.locator("#record[data-watch]")).to_have_count(0)
    sent = api.chat_requests()[-1].body["messages"][-1]["content"]
    assert "Answer Dana: Can I put the drip tray in the dishwasher?" in sent
    rec = result(desk, "a:faq", 1)
    assert rec["answer"] == "Yes, the drip tray and its grid are dishwasher safe."
    assert json.loads(rec["vars"]) == {"customer": "Dana"}


# ---- 8. signing out ---------------------------------------------------------------------

def test_sign_out_ends_the_session_and_the_next_visit_goes_to_the_login_page(page, desk):
    signed_in(page, "alice")
    page.goto("/results?app=a:ask")
    expect(page.locator("tr[data-id]")).to_have_count(5)
    token = [c for c in page.context.cookies() if c["name"] == "llm_desk"]
    assert len(token) == 1
    page.click(".signout button")
    page.wait_for_url(re.compile(r"/login$"))
    expect(page.locator("#login-submit")).to_be_visible()
    expect(page.locator("#user")).to_have_count(0)
    assert not [c for c in page.context.cookies() if c["name"] == "llm_desk"]

    page.goto("/results?app=a:ask")
    page.wait_for_url(re.compile(r"/login\?next="))
    expect(page.locator("tr[data-id]")).to_have_count(0)
    # The old token is dead on the server too, not only gone from the browser.
    page.context.add_cookies(token)
    page.goto("/results?app=a:ask")
    page.wait_for_url(re.compile(r"/login\?next="))
    reply = page.request.get("/record.json?app=a:ask&id=1", max_redirects=0)
    assert reply.status == 302 and "/login" in reply.headers["location"]
    # Signing in again goes back to the page asked for.
    page.fill("#login-user", "alice")
    page.fill("#login-password", "alice-pw")
    page.click("#login-submit")
    page.wait_for_url(re.compile(r"/results\?app=a(:|%3A)ask$"))
    expect(page.locator("tr[data-id]")).to_have_count(5)


# ---- 9. guarded reviews: the question lists -----------------------------------------------

def test_review_lists_are_given_in_the_queue_shown_on_the_record_and_served(page, api, desk):
    signed_in(page, "alice")
    page.goto("/review?app=a:ask")
    expect(page.locator("#record-id")).to_have_text("5")
    expect(page.locator("#review-also")).to_have_value("")
    expect(page.locator("#review-never")).to_have_value("")
    also = ["How do I descale my Aurora X2?", "What is the descaling procedure?"]
    never = ["How do I descale the Aurora X3?", "How often should I descale?"]
    page.fill("#review-score", "97")
    # More than 32 questions: the page refuses to send the form.
    sent = posts_to(page, "/review")
    page.fill("#review-also", "\n".join(f"question {n}" for n in range(33)))
    page.click("#review-submit")
    assert page.eval_on_selector("#review-also", "e => e.validationMessage") == \
        "Give at most 32 questions in both lists together (33 now)."
    assert page.evaluate("() => document.readyState") == "complete" and sent == []
    page.fill("#review-also", "\n".join(also))
    page.fill("#review-never", "\n".join(never) + "\n")
    shot(page, "review-lists")
    with page.expect_navigation():
        page.locator("#review-never").press("Control+Enter")
    expect(page.locator(".flash.ok")).to_have_text("Reviewed result 5: 97, a known fact.")
    rec = result(desk, "a:ask", 5)
    assert (json.loads(rec["also"]), json.loads(rec["never"])) == (also, never)

    # The record page shows both lists, and its form holds them, one per line.
    page.goto("/record?app=a:ask&id=5")
    expect(page.locator("#reviewed-also li")).to_have_text(also)
    expect(page.locator("#reviewed-never li")).to_have_text(never)
    expect(page.locator("#review-also")).to_have_value("\n".join(also))
    expect(page.locator("#review-never")).to_have_value("\n".join(never))
    shot(page, "record-lists")

    # An --ALSO question asked is served the review, and its record links to it.
    chats = len(api.chat_requests())
    page.goto("/ask?app=a:ask")
    page.check("#ask-sync")
    page.fill("#ask-input", also[0])
    with page.expect_navigation(url=re.compile(r"/record\?")):
        page.click("#ask-submit")
    expect(page.locator("#record-answer")).to_have_text(rec["reviewed_answer"])
    assert len(api.chat_requests()) == chats
    expect(page.locator("#record-served")).to_contain_text("from an expert review")
    with page.expect_navigation():
        page.click("#served-review")
    expect(page.locator("#record-id")).to_have_text("5")

    # Emptying a list on the record page clears it; the other is kept.
    page.fill("#review-never", "")
    with page.expect_navigation():
        page.click("#review-submit")
    expect(page.locator(".flash.ok")).to_contain_text("Reviewed result 5")
    expect(page.locator("#reviewed-never")).to_have_count(0)
    expect(page.locator("#reviewed-also li")).to_have_text(also)
    assert json.loads(result(desk, "a:ask", 5)["never"] or "[]") == []
