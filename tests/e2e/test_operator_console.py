"""The operator console in a real browser: Debian's Chromium, driven by Playwright, against a live server.

`make test` installs Chromium when it is missing and it can (as root: `apt-get install -y chromium`);
this test skips, saying so, only when no Chromium can be found at all.
"""

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from django.contrib.auth import get_user_model

from tests.tenants.factories import make_plan

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
OPERATOR_PASSWORD = "correct-horse-battery-staple"


def _chromium() -> str:
    found = str(CHROMIUM) if CHROMIUM.exists() else shutil.which("chromium")
    if found is None:
        pytest.skip(f"Chromium is not installed ({CHROMIUM}); as root: apt-get install -y chromium")
    return found


@contextmanager
def _browser_page() -> Iterator:
    # Started only after the test's database work: while Playwright's sync API runs, this thread has an
    # event loop, and Django refuses ORM calls from a thread with a running loop.
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=_chromium(), headless=True, args=CHROMIUM_FLAGS)
        try:
            yield browser.new_page()
        finally:
            browser.close()


@pytest.mark.django_db(transaction=True)
def test_an_operator_creates_a_tenant_in_the_console_and_its_key_shown_once_works_against_the_api(
    live_server,
):
    _chromium()
    # Transactional tests empty the database between them, the default plan included; bring a plan.
    make_plan(name="console-e2e")
    get_user_model().objects.create_superuser("operator", "operator@example.com", OPERATOR_PASSWORD)

    with _browser_page() as page:
        page.goto(f"{live_server.url}/admin/login/?next=/admin/")
        page.fill("#id_username", "operator")
        page.fill("#id_password", OPERATOR_PASSWORD)
        page.click("input[type=submit]")
        page.goto(f"{live_server.url}/admin/tenants/tenant/")
        page.click(".object-tools a.addlink")
        page.fill("#id_name", "Browser Co")
        page.select_option("#id_plan", label="console-e2e")
        page.fill("#id_key_name", "first key")
        page.click("input[type=submit]")
        raw_key = page.text_content("code.issued-api-key").strip()

    response = httpx.get(f"{live_server.url}/v1/tenant", headers={"Authorization": f"Bearer {raw_key}"})

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["name"] == "Browser Co"
    assert body["plan"]["name"] == "console-e2e"
    assert body["api_key"]["name"] == "first key"
    assert sorted(body["api_key"]["scopes"]) == ["enroll", "identify", "manage", "read"]
