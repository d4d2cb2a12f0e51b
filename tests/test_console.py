"""The console (/console) over plain HTTP, without a browser: it admits exactly whom the
JSON API admits, refuses a form without this browser's CSRF token, shows bad input as a
readable 4xx page that changes nothing, and names its caller in the access log."""

from __future__ import annotations

import re
import tomllib
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.harness import ORDER, Harness
from tests.test_access_log import log_lines  # noqa: F401  (a fixture)

ROOT = Path(__file__).resolve().parent.parent
CSRF = re.compile(r'name="csrf_token" value="([0-9a-f]+)"')


class Browserless:
    """One browser's cookies, without a browser."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.session = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))

    async def page(self, path: str) -> tuple[int, str]:
        async with self.session.get(self.base + path, allow_redirects=False) as response:
            return response.status, await response.text()

    async def csrf(self, path: str = "/console/sign-in") -> str:
        _, html = await self.page(path)
        match = CSRF.search(html)
        assert match, html
        return match.group(1)

    async def post(self, path: str, form: dict[str, str]) -> tuple[int, str, str | None]:
        async with self.session.post(self.base + path, data=form, allow_redirects=False) as response:
            return response.status, await response.text(), response.headers.get("Location")

    async def sign_in(self, token: str) -> None:
        status, _, location = await self.post("/console/sign-in", {"token": token, "csrf_token": await self.csrf()})
        assert (status, location) == (303, "/console/"), status

    async def close(self) -> None:
        await self.session.close()


@pytest.mark.parametrize("roles", [("buyer",), ("seller",), ("support",), ("admin",), ("buyer", "seller")])
async def test_a_console_page_admits_exactly_whom_its_JSON_route_admits(roles: tuple[str, ...]) -> None:
    async with Harness() as h:
        service = await h.start_instance()
        api = h.client(service, "someone", *roles)
        console = Browserless(f"http://127.0.0.1:{service.port}")
        try:
            await console.sign_in(h.token("someone", *roles))
            for page, route in (("/console/plugins", "/admin/plugins"), ("/console/clock", "/admin/clock"),
                                ("/console/dead-letters", "/admin/dead-letters")):
                await api.get(route)
                status, html = await console.page(page)
                assert status == api.last_status, (roles, page, status, api.last_status)
                if status == 403:
                    assert "this needs one of the roles" in html and "<h1>Forbidden</h1>" in html
        finally:
            await console.close()


async def test_a_form_with_another_browsers_CSRF_token_is_refused_and_changes_nothing() -> None:
    async with Harness() as h:
        service = await h.start_instance()
        base = f"http://127.0.0.1:{service.port}"
        mine, theirs = Browserless(base), Browserless(base)
        try:
            await mine.sign_in(h.token("ada", "admin"))
            await theirs.sign_in(h.token("eve", "admin"))
            their_token = await theirs.csrf("/console/plugins/availability/switch?to=off")
            for form in ({"to": "off", "csrf_token": their_token}, {"to": "off"}):
                status, html, _ = await mine.post("/console/plugins/availability/switch", form)
                assert status == 403 and "CSRF token is missing or does not match" in html
            assert "availability" in service.services.plugins.enabled
            # and its own token works
            form = {"to": "off", "csrf_token": await mine.csrf("/console/plugins/availability/switch?to=off")}
            status, _, location = await mine.post("/console/plugins/availability/switch", form)
            assert (status, location) == (303, "/console/plugins?done=switched-off")
        finally:
            await mine.close()
            await theirs.close()


async def test_bad_input_is_a_readable_4xx_page_and_changes_nothing() -> None:
    async with Harness() as h:
        service = await h.start_instance()
        console = Browserless(f"http://127.0.0.1:{service.port}")
        try:
            await console.sign_in(h.token("ada", "admin"))
            before = service.services.clock.now()
            status, html, _ = await console.post("/console/clock", {"by": "1 day",
                                                                    "csrf_token": await console.csrf("/console/clock")})
            assert status == 422 and "<h1>Invalid input</h1>" in html and "ISO 8601" in html, html
            assert '"status"' not in html  # words, not JSON
            assert service.services.clock.now() == before

            status, html = await console.page("/console/orders/no-such-order")
            assert status == 404 and "<h1>Not found</h1>" in html
            status, html, location = await console.post("/console/sign-in", {"token": "not-a-token", "csrf_token":
                                                                             await console.csrf()})
            assert status == 401 and "invalid token" in html
        finally:
            await console.close()


async def test_the_access_log_names_the_consoles_caller(log_lines: list[dict[str, Any]]) -> None:  # noqa: F811
    async with Harness() as h:
        service = await h.start_instance()
        console = Browserless(f"http://127.0.0.1:{service.port}")
        try:
            await console.sign_in(h.token("ada", "admin"))
            assert (await console.page("/console/plugins"))[0] == 200
        finally:
            await console.close()
    lines = [line for line in log_lines if line.get("event") == "request" and line.get("route") == "/console/plugins"]
    assert [(line["caller"], line["role"], line["status"]) for line in lines] == [("ada", "admin", 200)]


async def test_sign_in_without_a_session_redirects_and_the_cookie_is_HttpOnly_and_SameSite_Strict() -> None:
    async with Harness() as h:
        service = await h.start_instance()
        base = f"http://127.0.0.1:{service.port}"
        async with aiohttp.ClientSession() as session:
            async with session.get(base + "/console/orders", allow_redirects=False) as response:
                assert (response.status, response.headers["Location"]) == (303, "/console/sign-in")
        console = Browserless(base)
        try:
            token = await console.csrf()
            async with console.session.post(base + "/console/sign-in", allow_redirects=False,
                                            data={"token": h.token("ada", "admin"), "csrf_token": token}) as response:
                cookie = response.cookies["rescenter_session"]
                assert cookie["httponly"] and cookie["samesite"] == "Strict" and cookie["path"] == "/console"
        finally:
            await console.close()


def test_the_consoles_templates_and_static_files_are_package_data() -> None:
    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["core"]
    console = ROOT / "core" / "console"
    files = [p.relative_to(ROOT / "core").as_posix() for d in ("templates", "static") for p in (console / d).iterdir()]
    assert files and all(any(fnmatch(f, pattern) for pattern in patterns) for f in files), (files, patterns)


async def test_MET_1_the_policy_what_if_page_replays_as_the_JSON_route_does_and_writes_nothing() -> None:
    async with Harness() as h:
        service = await h.start_instance()
        assert service.services is not None
        base = f"http://127.0.0.1:{service.port}"
        support, buyer = Browserless(base), Browserless(base)
        try:
            await support.sign_in(h.token("sam", "support"))
            await buyer.sign_in(h.token("bob", "buyer"))
            assert (await buyer.page("/console/policy"))[0] == 403
            assert "Policy what-if" not in (await buyer.page("/console/orders"))[1]  # not offered either
            status, html = await support.page("/console/policy")
            assert status == 200 and "policy.metrics.completion_window" in html

            form = {"set": "policy.metrics.completion_window=P90D", "csrf_token": await support.csrf("/console/policy")}
            status, html, _ = await support.post("/console/policy", form)
            assert status == 200, html
            assert "What if policy.metrics.completion_window=P90D" in html and "<caption>" in html, html
            api = h.client(service, "sam", "support")
            answer = await api.post("/admin/policy/what-if", {"set": {"policy.metrics.completion_window": "P90D"}},
                                    expect=200)
            assert answer["metrics"]["window"]["proposed"] in html  # the same replay, as a table

            form = {"set": "policy.metrics.no_such_key=1", "csrf_token": await support.csrf("/console/policy")}
            status, html, _ = await support.post("/console/policy", form)
            assert status == 422 and "<h1>Invalid input</h1>" in html and "no_such_key" in html
            # A key given twice is refused, as the route refuses a member named twice: no silent last one.
            form = {"set": "policy.metrics.completion_window=P90D\npolicy.metrics.completion_window=P30D",
                    "csrf_token": await support.csrf("/console/policy")}
            status, html, _ = await support.post("/console/policy", form)
            assert status == 422 and "set twice" in html
        finally:
            await support.close()
            await buyer.close()


async def test_ORD_4_the_order_page_says_a_delivery_completes_itself_only_while_it_waits_for_the_buyer() -> None:
    async with Harness() as h:
        service = await h.start_instance()
        buyer, seller = h.client(service, "bob", "buyer"), h.client(service, "sue", "seller")
        order_id = (await buyer.post("/orders", {**ORDER, "seller_id": "sue"}, expect=201))["id"]
        await buyer.post(f"/orders/{order_id}/requirements", {"requirements": "a logo"}, expect=200)
        await seller.post(f"/orders/{order_id}/deliveries", {"message": "done"}, expect=200)
        support = Browserless(f"http://127.0.0.1:{service.port}")
        try:
            await support.sign_in(h.token("sam", "support"))
            status, html = await support.page(f"/console/orders/{order_id}")
            assert status == 200 and "Completes itself" in html
            await buyer.post(f"/orders/{order_id}/acceptance", expect=200)
            status, html = await support.page(f"/console/orders/{order_id}")
            assert status == 200 and "completed" in html and "Completes itself" not in html
        finally:
            await support.close()
