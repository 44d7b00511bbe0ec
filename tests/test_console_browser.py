"""The console's whole user story in a real browser (Debian's headless Chromium), against a
gateway in front of the fake provider: what an admin sees, and what the ledger holds.

Sign in as an admin user made with the CLI, create a tenant and a key, copy its secret
and call the gateway with it through the `openai` SDK, see the call and its cost on the
key's page, set a budget and see the 402, rotate and revoke, and sign out; a wrong
password, a tenant key, a form without its CSRF token and an expired session are refused.
Screenshots of the main pages are left in ``tests.browser.ARTIFACTS``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import timedelta
from decimal import Decimal
from typing import Any

import openai
import pytest
from sqlalchemy import update

from app.console.format import usd
from app.storage import database
from app.storage.models import console_sessions
from tests.browser import chromium, screenshot
from tests.fake_provider import API_KEY
from tests.gateway import KEY_ENV, SPEECH, Gateway, serve_gateway
from tests.processes import earmark_env, run_cli

PASSWORD = "a long and careful passphrase"
MODEL = "openai/whisper-1"


@pytest.fixture
def site(sqlite_url: str, fake_provider: Any, tmp_path, monkeypatch) -> Iterator[Gateway]:
    fake_provider.script.reset()
    monkeypatch.setenv(KEY_ENV, API_KEY)
    made = run_cli(earmark_env(sqlite_url), "admin", "create-user", "alice", stdin=f"{PASSWORD}\n")
    assert made.returncode == 0, made.stderr
    with serve_gateway(sqlite_url, fake_provider.url, tmp_path) as gateway:
        gateway.database_url = sqlite_url  # type: ignore[attr-defined]
        yield gateway


class Admin:
    """What a person does in the browser: open pages, fill fields, press buttons, read."""

    def __init__(self, browser: Any, url: str) -> None:
        from selenium.webdriver.common.by import By

        self.browser, self.url, self.by = browser, url, By
        self.pages: list[str] = []

    def open(self, path: str) -> None:
        self.browser.get(f"{self.url}{path}")
        self.check_page()

    def find(self, css: str) -> Any:
        return self.browser.find_element(self.by.CSS_SELECTOR, css)

    def fill(self, label: str, value: str) -> None:
        """Type into the input a visible label names (as a screen reader finds it)."""
        field = self.browser.find_element(
            self.by.XPATH, f"//label[normalize-space(text())={label!r}]//*[self::input]"
        )
        field.clear()
        field.send_keys(value)

    def press(self, text: str, navigates: bool = True) -> None:
        """Click the button or link ``text`` names and, if it leads to another page, wait
        until that page has replaced this one: a click returns before the next page loads,
        and what is read of the old page meanwhile is stale (a busy machine showed it)."""
        from selenium.common.exceptions import WebDriverException
        from selenium.webdriver.support.wait import WebDriverWait

        target = f"//button[normalize-space()={text!r}] | //a[normalize-space()={text!r}]"
        for attempt in range(3):
            try:
                page = self.find("html")  # the page the click leaves, once it lands
                self.browser.find_element(self.by.XPATH, target).click()
                break
            except WebDriverException as error:
                # Chromium lost the node between finding and clicking it: the click never
                # happened, so find the button again.
                if not _lost(error) or attempt == 2:
                    raise

        def left(_driver: object) -> bool:
            try:
                page.is_enabled()
            except WebDriverException as error:
                if _lost(error):
                    return True
                raise
            return False

        if navigates:
            WebDriverWait(self.browser, 30).until(left)
        self.check_page()

    @property
    def text(self) -> str:
        return self.find("body").text

    @property
    def path(self) -> str:
        return self.browser.current_url.removeprefix(self.url)

    def check_page(self) -> None:
        """Nothing this page loaded came from another origin, and the CSP blocked nothing."""
        self.pages.append(self.path)
        fetched = self.browser.execute_script(
            "return performance.getEntriesByType('resource').map(e => e.name)"
        )
        assert all(url.startswith(self.url) for url in fetched), fetched
        refused = [
            entry["message"]
            for entry in self.browser.get_log("browser")
            if "Content Security Policy" in entry["message"]
            or (entry["level"] == "SEVERE" and not _a_page_refused(entry["message"]))
        ]
        assert not refused, (self.path, refused)

    def sign_in(self, user: str, password: str) -> None:
        self.fill("Admin user", user)
        self.fill("Password", password)
        self.press("Sign in")


def _lost(error: Exception) -> bool:
    """A node of a page that is gone: selenium says "stale", and Chromium, on a busy
    machine, "Node with given id does not belong to the document"."""
    return "does not belong to the document" in str(error) or "stale" in str(error)


def _a_page_refused(message: str) -> bool:
    """A page's own refusal (a 401 sign-in, a 403 form): what the test expects, not a
    missing asset or a script error."""
    return "the server responded with a status of" in message and "/static/" not in message


def _idle_for(database_url: str, idle: timedelta) -> None:
    """Every session was last seen ``idle`` ago."""

    async def age() -> None:
        engine = database.create_engine(database_url)
        try:
            async with database.write(engine) as conn:
                await conn.execute(
                    update(console_sessions).values(seen_at=database.utcnow() - idle)
                )
        finally:
            await engine.dispose()

    asyncio.run(age())


def test_an_admin_runs_a_tenant_from_the_console(site: Gateway) -> None:
    from selenium.webdriver.support.wait import WebDriverWait

    stranger = site.new_key("someone else")
    with chromium() as browser:
        admin = Admin(browser, site.url)
        wait = WebDriverWait(browser, 20)

        # A page asked for before signing in comes back after it.
        admin.open("/console/tenants")
        assert admin.path == "/console/sign-in?next=%2Fconsole%2Ftenants"
        admin.sign_in("alice", "not the password")
        assert "Wrong user name or password." in admin.text
        admin.sign_in("", stranger["secret"])
        assert "Tenant keys cannot open the console" in admin.text
        admin.sign_in("alice", PASSWORD)
        assert admin.path == "/console/tenants"
        assert "user:alice" in admin.text

        # A tenant, then a key for it, whose secret is shown once and copied.
        admin.fill("Name", "Acme Speech")
        admin.press("Create tenant")
        assert "Created." in admin.text and "Acme Speech" in admin.text
        admin.press("New key for Acme Speech")
        admin.fill("Name", "web-app")
        admin.find(f'input[name="models"][value="{MODEL}"]').click()
        admin.press("Create key")
        assert "you will not see it again" in admin.text
        secret = admin.find("#secret").get_attribute("value")
        assert secret.startswith("sk-bf-")
        screenshot(browser, "console-key-created")
        browser.execute_cdp_cmd(
            "Browser.grantPermissions",
            {"origin": site.url, "permissions": ["clipboardReadWrite", "clipboardSanitizedWrite"]},
        )
        admin.press("Copy", navigates=False)
        wait.until(lambda _: admin.find(".copied").text == "Copied.")
        copied = browser.execute_async_script(
            "navigator.clipboard.readText().then(arguments[0], () => arguments[0](null))"
        )
        assert copied == secret

        # The copied secret works through the official SDK, and the call shows on its page.
        transcript = site.sdk(copied).audio.transcriptions.create(
            model=MODEL, file=("speech.wav", SPEECH, "audio/wav")
        )
        assert transcript.text
        admin.press("Go to the key's page →")
        key_id = admin.path.split("/")[-1]
        [call] = site.admin("GET", f"/admin/keys/{key_id}/calls")["data"]
        assert Decimal(call["cost_usd"]) > 0
        calls = admin.find("table").text
        assert usd(call["cost_usd"]) in calls and "succeeded" in calls
        assert f"{call['audio_ms'] / 1000:,.1f} s" in calls
        screenshot(browser, "console-key")

        # A budget smaller than one call: the next call is refused with 402, and the page
        # says so.
        admin.fill("Limit (USD)", "0.000001")
        admin.press("Add budget")
        assert "Created." in admin.text
        with pytest.raises(openai.APIStatusError) as refused:
            site.sdk(secret).audio.transcriptions.create(
                model=MODEL, file=("speech.wav", SPEECH, "audio/wav")
            )
        assert refused.value.status_code == 402
        admin.open(f"/console/keys/{key_id}")
        assert "402" in admin.find("table").text

        # Rotate: a new secret, shown once; the old one stops working.
        admin.fill("Old secret works for (seconds)", "0")
        admin.press("Rotate secret")
        rotated = admin.find("#secret").get_attribute("value")
        assert rotated.startswith("sk-bf-") and rotated != secret
        with pytest.raises(openai.AuthenticationError):
            site.sdk(secret).models.list()
        assert site.sdk(rotated).models.list().data

        # Revoke, after a confirmation: the new secret is refused too.
        admin.open(f"/console/keys/{key_id}")
        admin.press("Revoke…")
        assert "Revoke web-app?" in admin.text
        admin.press("Revoke the key")
        assert "The key is revoked" in admin.text
        with pytest.raises(openai.PermissionDeniedError):
            site.sdk(rotated).models.list()

        # The other pages, and the screenshots the README shows.
        admin.open("/console")
        assert "Acme Speech" in admin.text and "web-app" in admin.text
        screenshot(browser, "console-overview")
        admin.open("/console/usage")
        wait.until(lambda _: browser.find_elements(admin.by.CSS_SELECTOR, ".chart canvas"))
        screenshot(browser, "console-usage")
        admin.open("/console/audit?actor=user%3Aalice")
        assert "key.revoke" in admin.text and "key.rotate" in admin.text
        for path in ("/console/models", "/console/webhooks", "/console/tenants"):
            admin.open(path)
        # Typing in a list's filter narrows it in place (htmx, under the CSP).
        admin.open("/console/keys")
        assert "web-app" in admin.find("#results").text
        admin.find('input[name="name"]').send_keys("no such key")
        wait.until(lambda _: "No keys match." in admin.find("#results").text)
        assert admin.path.startswith("/console/keys?name=no%20such%20key")  # the address too
        admin.check_page()
        browser.set_window_size(390, 844)  # a phone
        admin.open(f"/console/keys/{key_id}")
        screenshot(browser, "console-key-phone")
        browser.set_window_size(1280, 900)

        # A form whose CSRF token was taken out changes nothing.
        admin.open("/console/tenants")
        browser.execute_script(
            'document.querySelector(\'form[action="/console/tenants"][method="post"] '
            "input[name=csrf]').remove()"
        )
        admin.fill("Name", "Forged")
        admin.press("Create tenant")
        assert "out of date or was not sent from the console" in admin.text
        names = [tenant["name"] for tenant in site.admin("GET", "/admin/tenants")["data"]]
        assert "Forged" not in names

        # Signing out ends the session; an idle session ends on its own.
        admin.open("/console")
        admin.press("Sign out")
        assert admin.path == "/console/sign-in"
        admin.open("/console")
        assert admin.path.startswith("/console/sign-in")
        admin.sign_in("alice", PASSWORD)
        assert admin.path == "/console"
        _idle_for(site.database_url, timedelta(hours=1))  # type: ignore[attr-defined]
        admin.open("/console/keys")
        assert admin.path == "/console/sign-in?next=%2Fconsole%2Fkeys"
