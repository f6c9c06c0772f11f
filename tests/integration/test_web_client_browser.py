"""The built-in web client in a real browser: Playwright for Python driving Debian's Chromium (installed
with apt-get when missing; never `playwright install`).  Two users log in through the page served at
/, one sends a message, the other page shows it, and the reply comes back.  Everything goes over
the WebSocket endpoint into the same c2s code as TCP."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess

import aiohttp
import pytest
from xmpp_helpers import befriend

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
TIMEOUT = 30_000  # ms, for each step in the page


def chromium() -> str:
    """Debian's Chromium; installed with apt-get (as root) when missing, else the test is skipped."""
    if os.path.exists(CHROMIUM):
        return CHROMIUM
    why = "apt-get is not available or we are not root"
    if shutil.which("apt-get") and os.geteuid() == 0:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        try:
            subprocess.run(["apt-get", "update", "-qq"], env=env, timeout=600, check=True, capture_output=True)
            subprocess.run(["apt-get", "install", "-y", "-qq", "chromium"], env=env, timeout=1200, check=True,
                           capture_output=True)
        except (subprocess.SubprocessError, OSError) as e:
            why = f"apt-get install chromium failed: {e}"
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"Chromium is not installed at {CHROMIUM} and could not be installed ({why})")
    return CHROMIUM


async def login(browser, url: str, jid: str, password: str):  # noqa: ANN001, ANN201
    ctx = await browser.new_context()
    page = await ctx.new_page()
    await page.goto(url)
    await page.fill("#converse-login-jid", jid, timeout=TIMEOUT)
    await page.fill("#converse-login-password", password)
    await page.click("converse-login-form button[type=submit]")
    await page.wait_for_selector("converse-roster-contact", state="attached", timeout=TIMEOUT)
    return page


async def open_chat(page, jid: str):  # noqa: ANN001, ANN201
    """The chat with ``jid`` (the page routes ``#converse/chat?jid=``); returns its text box."""
    box = page.locator(f"converse-chat[jid='{jid}'] textarea.chat-textarea")
    # a hash set before the page's router listens is lost: set it again until the chat shows (bounded)
    for attempt in range(10):
        await page.evaluate("jid => { location.hash = '#converse/chat?jid=' + jid; }", jid)
        try:
            await box.wait_for(timeout=TIMEOUT // 10)
            return box
        except Exception:
            if attempt == 9:
                raise
            await page.evaluate("() => { location.hash = ''; }")
    return box


async def say(page, to: str, text: str) -> None:  # noqa: ANN001
    box = await open_chat(page, to)
    await box.fill(text)
    await box.press("Enter")


async def shows(page, jid: str, text: str) -> None:  # noqa: ANN001
    await open_chat(page, jid)
    msg = page.locator(f"converse-chat[jid='{jid}'] .chat-msg__text", has_text=text)
    await msg.first.wait_for(timeout=TIMEOUT)


@pytest.mark.timeout(1500)  # apt-get install chromium, when it is missing, takes minutes
async def test_two_users_chat_through_the_web_client(rookery_server):
    api = pytest.importorskip("playwright.async_api")
    exe = chromium()
    url = rookery_server.http_url + "/"
    async with aiohttp.ClientSession() as s, s.get(url) as r:
        if r.status == 503:
            pytest.skip("the web client is not installed: run `npm ci --prefix web` (make test does)")
        assert r.status == 200
    a_jid, a_pw = rookery_server.make_user()
    b_jid, b_pw = rookery_server.make_user()
    befriend(rookery_server, a_jid, b_jid)
    async with api.async_playwright() as p:
        browser = await p.chromium.launch(executable_path=exe, headless=True, args=["--no-sandbox"])
        try:
            page_a, page_b = await asyncio.gather(login(browser, url, a_jid, a_pw),
                                                  login(browser, url, b_jid, b_pw))
            assert rookery_server.session_count() == 2
            await say(page_a, b_jid, "hello from the web client")
            await shows(page_b, a_jid, "hello from the web client")
            await say(page_b, a_jid, "and the reply")
            await shows(page_a, b_jid, "and the reply")
        finally:
            await browser.close()
