"""The chat page at / of `paddle-belle serve` (the bundled belle-tiny-zh on 127.0.0.1), driven in a real headless
chromium at a phone's screen size."""
import re
import time

import pytest
import requests
from browser import chrome, posted, requested
from servers import BelleServer

KEY = "sk-page-test"
FIRST, SECOND, LONG = "中国的首都是哪里？", "那上海呢？", "写一首关于春天的诗"

# Every change the page makes to the newest reply, as the length of its text (a MutationObserver in the page).
OBSERVE = """
window.lengths = [];
const messages = document.getElementById("messages");
new MutationObserver(() => {
  const replies = messages.querySelectorAll(".msg.assistant");
  if (replies.length) window.lengths.push(replies[replies.length - 1].textContent.length);
}).observe(messages, {childList: true, subtree: true, characterData: true});
"""


@pytest.fixture(scope="module")
def server():
    s = BelleServer("belle-tiny-zh", "--api-key", KEY, "--max-concurrency", "1")
    yield s
    s.stop()


@pytest.fixture
def browser():
    driver = chrome(phone=True)
    yield driver
    driver.quit()


def wait_for(condition, what, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_the_chat_page_in_a_real_browser(server, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select

    d = browser
    by_id = lambda name: d.find_element(By.ID, name)  # noqa: E731

    def replies():
        return [e.get_attribute("textContent") for e in d.find_elements(By.CSS_SELECTOR, ".msg.assistant")]

    def show_settings(on):  # the Settings button opens and closes them, as on a phone
        if by_id("settings").is_displayed() != on:
            by_id("toggle-settings").click()
        assert by_id("settings").is_displayed() == on

    def set_field(name, value):
        show_settings(True)
        by_id(name).clear()
        by_id(name).send_keys(str(value))

    def wait_until_done():
        wait_for(lambda: by_id("send").is_displayed() and not by_id("stop").is_displayed(), "the reply to end")

    # The page and everything it loads come from the server; the key is nowhere in them: the user types it.
    for path in ("/", "/static/chat.js", "/static/chat.css", "/page/settings"):
        r = requests.get(server.url + path, timeout=10)
        assert r.status_code == 200 and KEY not in r.text, path
    d.get(server.url + "/")
    wait_for(lambda: by_id("model").text == "belle-tiny-zh", "the server's settings")
    loaded_urls = requested(d)
    assert by_id("api-key").is_displayed() and "needs its API key" in by_id("status").text
    # phone-sized: nothing wider than the screen, the box and its button in view
    assert d.execute_script("return document.documentElement.scrollWidth <= window.innerWidth")
    assert by_id("input").is_displayed() and by_id("send").is_displayed()
    assert d.execute_script("const r = document.getElementById('send').getBoundingClientRect();"
                            "return r.right <= window.innerWidth && r.bottom <= window.innerHeight")

    # A wrong key: a readable error, and the question back in the box to send again.
    by_id("api-key").send_keys("sk-wrong")
    box = by_id("input")
    box.send_keys(FIRST, Keys.ENTER)
    error = wait_for(lambda: d.find_elements(By.CSS_SELECTOR, ".msg.error"), "the error")[0]
    assert error.text == ("Error 401: invalid API key: send it as 'Authorization: Bearer KEY'. Type the server's API "
                          "key under Settings.")
    assert box.get_attribute("value") == FIRST
    assert [r["messages"] for r in posted(d, "/v1/chat/completions")] == [[{"role": "user", "content": FIRST}]]

    set_field("api-key", KEY)
    Select(by_id("preset")).select_by_visible_text("greedy")  # reproducible replies
    set_field("repetition_penalty", 1.2)
    set_field("max_tokens", 48)
    show_settings(False)
    # Typed again through an input method (Chrome's own IME composition, driven over the DevTools protocol): the Enter
    # that confirms a candidate while composing is not a send.
    box.clear()
    box.click()
    d.execute_cdp_cmd("Input.imeSetComposition", {"text": "zhongguo", "selectionStart": 8, "selectionEnd": 8})
    for kind in ("rawKeyDown", "keyUp"):
        d.execute_cdp_cmd("Input.dispatchKeyEvent", {"type": kind, "key": "Enter", "code": "Enter",
                                                     "windowsVirtualKeyCode": 13})
    d.execute_cdp_cmd("Input.insertText", {"text": FIRST})  # the candidate chosen
    assert box.get_attribute("value") == FIRST and replies() == [] and posted(d, "/v1/chat/completions") == []

    # The reply streams in: the page shows it growing, token by token, then tokens/s.
    d.execute_script(OBSERVE)
    box.send_keys(Keys.ENTER)
    wait_until_done()
    first = replies()[-1]
    grown = [n for n in d.execute_script("return window.lengths") if n]
    assert first and len(set(grown)) >= 3 and grown[:-1] == sorted(grown[:-1]), grown
    assert re.fullmatch(r"\d+ tokens in [\d.]+ s · [\d.]+ tokens/s( · cut at max tokens)?", by_id("status").text)
    request = posted(d, "/v1/chat/completions")[-1]
    assert request["messages"] == [{"role": "user", "content": FIRST}] and request["stream"] is True
    assert {k: request[k] for k in ("temperature", "top_k", "top_p", "repetition_penalty", "max_tokens",
                                    "prompt_style")} == {"temperature": 0, "top_k": 0, "top_p": 1,
                                                         "repetition_penalty": 1.2, "max_tokens": 48,
                                                         "prompt_style": "belle"}

    # The second question carries the conversation.
    box.send_keys(SECOND, Keys.ENTER)
    wait_until_done()
    assert posted(d, "/v1/chat/completions")[-1]["messages"] == [
        {"role": "user", "content": FIRST}, {"role": "assistant", "content": first},
        {"role": "user", "content": SECOND}]

    show_settings(False)
    d.save_screenshot(str(tmp_path / "chat_page.png"))

    # New chat, then stop cancels a long reply, and the server frees the slot.
    by_id("new-chat").click()
    assert replies() == []
    set_field("repetition_penalty", 1)  # greedy without a penalty: this question alone runs to max_tokens
    set_field("max_tokens", 2000)
    before = server.health()
    box.send_keys(LONG, Keys.ENTER)
    wait_for(lambda: len(replies()[-1]) > 20, "the long reply to start")
    assert server.health()["active"] == 1
    assert posted(d, "/v1/chat/completions")[-1]["messages"] == [{"role": "user", "content": LONG}]
    by_id("stop").click()
    wait_for(lambda: server.health()["active"] == 0, "the server to free the slot", timeout=60)
    after = server.health()
    assert (after["disconnected"], after["completed"]) == (before["disconnected"] + 1, before["completed"])
    stopped = d.find_elements(By.CSS_SELECTOR, ".msg.assistant")[-1]
    assert stopped.get_attribute("data-stopped") == "true" and by_id("status").text == "stopped"
    assert by_id("send").is_displayed() and not by_id("stop").is_displayed()
    show_settings(False)
    d.save_screenshot(str(tmp_path / "chat_page_stopped.png"))

    # The page goes on: the stopped reply is part of the conversation.
    set_field("max_tokens", 8)
    box.send_keys(SECOND, Keys.ENTER)
    wait_until_done()
    sent = posted(d, "/v1/chat/completions")[-1]["messages"]
    assert sent == [{"role": "user", "content": LONG},
                    {"role": "assistant", "content": stopped.get_attribute("textContent").rstrip()},
                    {"role": "user", "content": SECOND}]
    assert server.health()["completed"] == after["completed"] + 1
    # everything the page loaded came from the server (no CDN)
    assert all(url.startswith(server.url) for url in loaded_urls)
