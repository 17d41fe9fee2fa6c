"""The chat page in a real browser: `vintage serve` on a tiny run made here, driven with headless
Chromium through Playwright. The page must show the model, stream a reply as it is generated,
stop it on Stop (keeping what came, marked stopped), carry on the conversation, send the API key
when the server wants one, show the server's errors, and log no error of its own.

Needs Debian's Chromium at /usr/bin/chromium (apt-get install chromium) and the Playwright Python
package (pip install -e '.[test]'); it never downloads a browser. A screenshot of the page is kept
in the test's tmp_path and copied to /tmp/vintagelm_browser.png.

    pytest tests/test_browser.py -q
"""
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager

import pytest

from browser import browser_page
from verse import WORDS
from vintagelm.chat.reply import ChatModel
from vintagelm.cli import main

SCREENSHOT_COPY = "/tmp/vintagelm_browser.png"
# A base model (no fine-tuning). It never saw <|end|> or <|endoftext|> in its text, yet after the
# chat prompt's <|end|><|assistant|>, also never seen, one of them is its first token about one time
# in twenty (an empty reply): so the tests ban both (never_ending) and every reply runs to max_tokens.
TRAIN = ["--max-iters", "150", "--set", "n_layer=1", "--set", "n_embd=32", "--set", "n_head=2",
         "--set", "block_size=64", "--set", "sample_tokens=0", "--no-progress"]
# max tokens of the reply that is stopped: far more than it can stream before Stop (a quiet
# machine streams a 1024-token reply in well under a second, faster than the page can watch it)
LONG_REPLY = 100_000
API_KEY = "sesame-key"


# ---------------------------------------------------------------- a run, a server, a browser
@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A tiny base model trained on a made-up verse text; the run folder is named `verse`."""
    root = tmp_path_factory.mktemp("browser")
    with pytest.MonkeyPatch.context() as mp:
        # prepared datasets are cached under $VINTAGELM_CACHE: keep them in the test's folder
        mp.setenv("VINTAGELM_CACHE", str(root / "cache"))
        rng = random.Random(0)
        text = "\n".join(" ".join(rng.choice(WORDS) for _ in range(8)) for _ in range(600)) + "\n"
        (root / "verse.txt").write_text(text)
        assert main(["train", "--data", str(root / "verse.txt"), "--out", str(root / "verse"), *TRAIN]) == 0
    return root / "verse"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(url, timeout=5):
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.loads(response.read())


@contextmanager
def serve(run, log_path, *options):
    """`vintage serve RUN` in a subprocess -> its base URL once /health answers; killed after."""
    port = free_port()
    env = dict(os.environ, VINTAGELM_CACHE=str(log_path.parent / "cache"))
    with open(log_path, "w+") as log:
        proc = subprocess.Popen([sys.executable, "-m", "vintagelm", "serve", str(run), "--port", str(port), *options],
                                stdout=log, stderr=subprocess.STDOUT, env=env)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 60
            while True:
                if proc.poll() is not None:
                    pytest.fail(f"vintage serve exited with status {proc.returncode}:\n{tail(log)}", pytrace=False)
                try:
                    get_json(url + "/health", timeout=2)
                    break
                except OSError:  # not listening yet
                    if time.monotonic() > deadline:
                        pytest.fail(f"vintage serve did not answer /health within 60 s:\n{tail(log)}", pytrace=False)
                    time.sleep(0.2)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def tail(log):
    log.flush()
    log.seek(0)
    return log.read()[-4000:]


def never_ending(page, run):
    """Every chat request the page sends goes out with a logit_bias of -100 on the run's stop tokens
    (<|end|>, <|endoftext|>): the tiny model's replies cannot end before max_tokens, so a test never
    depends on a sampled token. The page's own request is what `chat_requests` records."""
    _, stop_ids = ChatModel.load(run).chat_rules()  # the tokens a chat reply ends on
    stops = [str(i) for i in stop_ids]
    assert len(stops) == 2, stops

    def add_bias(route):
        body = route.request.post_data_json
        body["logit_bias"] = {i: -100 for i in stops}
        route.continue_(post_data=json.dumps(body))
    page.route("**/v1/chat/completions", add_bias)


def chat_requests(page):
    """A list that fills with (body, Authorization header) of every chat request the page sends."""
    sent = []
    page.on("request", lambda r: sent.append((r.post_data_json, r.headers.get("authorization")))
            if r.url.endswith("/v1/chat/completions") else None)
    return sent


# ---------------------------------------------------------------- reading the page
def reply_text(page, n):
    """The text of the n-th reply on the page (0 = first)."""
    return page.get_by_test_id("reply-text").nth(n).text_content()


def wait_for_reply_end(page, n):
    """Wait until the n-th reply has ended (data-state set) -> its state."""
    page.wait_for_function(f"() => document.querySelectorAll('[data-testid=reply]')[{n}]?.dataset.state !== undefined")
    return page.get_by_test_id("reply").nth(n).get_attribute("data-state")


def wait_for_model_name(page, name):
    # Predicates are functions, not bare expressions: Playwright evaluates a bare expression again at
    # every poll with eval, which the page's Content-Security-Policy forbids; a function only once.
    page.wait_for_function(f"() => document.querySelector('[data-testid=model-name]').textContent === "
                           f"{json.dumps(name)}")


# Runs in the page: read the first reply every 10 ms while it streams and, once it has taken
# `want` growing values, press Stop; the values seen land in window.watched. It is done in the
# page, not from Python, because a round trip through Playwright can take longer than the tiny
# model needs for its whole reply.
WATCH_AND_STOP = """(want) => {
  const seen = [];
  const started = performance.now();
  const timer = setInterval(() => {
    const reply = document.querySelector('[data-testid=reply]');
    const text = reply ? reply.querySelector('[data-testid=reply-text]').textContent : '';
    if (text && text !== seen[seen.length - 1]) seen.push(text);
    const ended = reply && reply.dataset.state !== undefined;
    if (seen.length >= want || ended || performance.now() - started > 20000) {
      clearInterval(timer);
      document.querySelector('[data-testid=stop]').click();
      window.watched = seen;
    }
  }, 10);
}"""


def watched(page):
    """The values WATCH_AND_STOP saw. Waited for from Python with a time limit (not awaited in the
    page), so that a page that stops running its timers fails the test instead of hanging it."""
    page.wait_for_function("() => window.watched !== undefined", timeout=60_000)
    return page.evaluate("window.watched")


# Runs in the page: its own readEvents on a stream that already holds all of its 100 events, each
# taking 2 ms to handle (as laying out a long reply can), with a timer set just before.
# -> [events handled when the timer ran, or null if it never ran before the end; events in all]
FULL_STREAM = """async () => {
  const encoder = new TextEncoder();
  const stream = new ReadableStream({ start(queue) {
    for (let i = 0; i < 100; i++) queue.enqueue(encoder.encode(`data: {"i": ${i}}\\n\\n`));
    queue.close();
  } });
  let handled = 0;
  let timerRanAt = null;
  setTimeout(() => { timerRanAt = handled; }, 0);
  await readEvents(stream, () => {
    const start = performance.now();
    while (performance.now() - start < 2) {}
    handled++;
  });
  return [timerRanAt, handled];
}"""


def wait_for_idle(url, timeout=10):
    """/health's `active` once it is back to 0 (or after timeout)."""
    deadline = time.monotonic() + timeout
    while True:
        active = get_json(url + "/health")["active"]
        if active == 0 or time.monotonic() > deadline:
            return active
        time.sleep(0.1)


# ---------------------------------------------------------------- the tests
def test_chat_page_streams_stops_and_continues(run_dir, tmp_path):
    with browser_page() as (page, problems), serve(run_dir, tmp_path / "serve.log", "--max-tokens-cap",
                                                   str(LONG_REPLY)) as url:
        sent = chat_requests(page)
        never_ending(page, run_dir)
        page.goto(url + "/")

        # the model's name from /health (the run folder's), the defaults, no key field
        wait_for_model_name(page, "verse")
        assert "64 tokens" in page.locator("#model-info").inner_text()
        assert page.get_by_test_id("temperature").input_value() == "0.8"
        assert page.get_by_test_id("top-p").input_value() == "0.95"
        assert page.get_by_test_id("max-tokens").input_value() == "200"
        assert not page.get_by_test_id("api-key").is_visible()

        # a long reply, watched while it streams, then stopped
        page.get_by_test_id("system").fill("thou art a player")
        page.get_by_test_id("max-tokens").fill(str(LONG_REPLY))
        page.get_by_test_id("message-box").fill("the king doth speak")
        page.evaluate(WATCH_AND_STOP, 4)
        page.get_by_test_id("send").click()
        seen = watched(page)
        state = wait_for_reply_end(page, 0)
        stopped = reply_text(page, 0)
        assert len(seen) >= 3, (f"the reply did not grow while streaming: {seen!r}, ended {state!r} with "
                                f"{stopped!r}, error {page.get_by_test_id('error').inner_text()!r}")
        assert all(b.startswith(a) and len(b) > len(a) for a, b in zip(seen, seen[1:])), seen
        assert state == "stopped", (f"the reply ended ({state}) before Stop was pressed, after "
                                    f"{len(stopped)} characters: the stream was too fast to stop")
        assert "stopped" in page.get_by_test_id("reply").nth(0).get_by_test_id("note").inner_text()
        assert stopped.startswith(seen[-1]) and len(stopped) < LONG_REPLY
        time.sleep(0.5)
        assert reply_text(page, 0) == stopped, "the reply kept growing after Stop"
        assert page.get_by_test_id("send").is_enabled() and not page.get_by_test_id("stop").is_enabled()
        # the abort closed the connection, and so the server stopped generating
        assert wait_for_idle(url) == 0, "the server still generates the stopped reply"

        # a second message, sent with Enter, carries the whole conversation (partial reply included)
        page.get_by_test_id("max-tokens").fill("40")
        page.get_by_test_id("message-box").fill("where shall we meet")
        page.get_by_test_id("message-box").press("Enter")
        assert wait_for_reply_end(page, 1) == "length"
        assert reply_text(page, 1), "the second reply is empty"
        assert page.get_by_test_id("error").inner_text() == ""
        body, auth = sent[-1]
        assert (body["stream"], body["max_tokens"], body["model"], auth) == (True, 40, "verse", None)
        assert body["messages"] == [{"role": "system", "content": "thou art a player"},
                                    {"role": "user", "content": "the king doth speak"},
                                    {"role": "assistant", "content": stopped},
                                    {"role": "user", "content": "where shall we meet"}]

        shot = tmp_path / "browser.png"
        page.screenshot(path=str(shot), full_page=True)
        shutil.copy(shot, SCREENSHOT_COPY)

        # Shift+Enter is a newline, not a send; New chat empties the conversation
        page.get_by_test_id("message-box").fill("good")
        page.get_by_test_id("message-box").press("Shift+Enter")
        assert page.get_by_test_id("message-box").input_value() == "good\n" and len(sent) == 2
        page.get_by_test_id("new-chat").click()
        assert page.get_by_test_id("reply").count() == 0 and page.get_by_test_id("user-message").count() == 0
    assert not problems, "\n".join(problems)


def test_chat_page_asks_for_the_api_key_and_shows_errors(run_dir, tmp_path):
    key_server = serve(run_dir, tmp_path / "serve.log", "--api-key", API_KEY)
    with browser_page() as (page, problems), key_server as url:
        sent = chat_requests(page)
        never_ending(page, run_dir)
        page.goto(url + "/")
        wait_for_model_name(page, "verse")
        assert page.get_by_test_id("api-key").is_visible()

        # without the key: the server's 401 is shown, and the line goes back into the box
        page.get_by_test_id("max-tokens").fill("20")
        page.get_by_test_id("message-box").fill("good morrow")
        page.get_by_test_id("send").click()
        assert wait_for_reply_end(page, 0) == "failed"
        error = page.get_by_test_id("error").inner_text()
        assert "401" in error, error
        assert page.get_by_test_id("message-box").input_value() == "good morrow"

        # with the key: a reply, and the failed turn is not part of the conversation
        page.get_by_test_id("api-key").fill(API_KEY)
        page.get_by_test_id("message-box").press("Enter")
        assert wait_for_reply_end(page, 1) == "length"
        assert reply_text(page, 1) and page.get_by_test_id("error").inner_text() == ""
        body, auth = sent[-1]
        assert auth == f"Bearer {API_KEY}"
        assert body["messages"] == [{"role": "user", "content": "good morrow"}]

        # the key is remembered for the next visit
        page.reload()
        wait_for_model_name(page, "verse")
        assert page.get_by_test_id("api-key").input_value() == API_KEY
    # the browser itself logs the refused request; anything else is the page's fault
    unexpected = [p for p in problems if "status of 401" not in p]
    assert len(unexpected) == 0 and len(problems) == 1, "\n".join(problems)


def test_chat_page_handles_clicks_while_a_fast_stream_is_read(run_dir, tmp_path):
    """A read of a stream that already holds data resolves at once, without a turn of the event
    loop: a server that streams faster than the page shows would keep Stop from being clicked (and
    froze the page, in a long reply). The reader must give the event loop a turn while it reads.
    Not timed: each event takes at least 2 ms, so 100 of them take 200 ms on any machine."""
    with browser_page() as (page, problems), serve(run_dir, tmp_path / "serve.log") as url:
        page.goto(url + "/")
        wait_for_model_name(page, "verse")
        timer_ran_at, handled = page.evaluate(FULL_STREAM)
        assert handled == 100
        assert timer_ran_at is not None and timer_ran_at < handled, \
            "a timer set before the stream was read ran only after all of it: the page froze while reading"
    assert not problems, "\n".join(problems)
