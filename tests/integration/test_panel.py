"""The control panel (`make lab`) in a real browser: Debian's chromium, driven by Playwright, headless.

One cluster (memory sessions, so the lessons show), its panel started the way `scaleout lab` starts it,
and one page that is driven through the controls a user would click.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator

import httpx
import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, sync_playwright

from scaleout.core.config import ROOT
from scaleout.lab.drivers.local import Cluster
from scaleout.lab.load import wait_until
from scaleout.lab.panel.app import panel_token

pytestmark = [pytest.mark.cluster, pytest.mark.browser]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


@pytest.fixture(scope="module")
def cluster(start_cluster: Callable[..., Cluster]) -> Cluster:
    c = start_cluster(auth_mode="session", session_store="memory", lb_mode="round_robin")
    c.start_panel()  # stopped with the cluster, by pid
    return c


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        yield b
        b.close()


@pytest.fixture(scope="module")
def page(browser: Browser, cluster: Cluster) -> Iterator[Page]:
    errors: list[str] = []
    pg = browser.new_page(viewport={"width": 1400, "height": 1100})

    def on_console(msg: ConsoleMessage) -> None:
        if msg.type == "error":
            errors.append(msg.text)

    pg.on("console", on_console)
    pg.on("pageerror", lambda exc: errors.append(str(exc)))
    pg.goto(f"http://127.0.0.1:{cluster.settings.lab_port}/?token={panel_token(cluster.settings)}")
    pg.wait_for_selector("#tile-api-3")
    pg.errors = errors  # type: ignore[attr-defined]
    yield pg
    pg.close()


def tile_up(page: Page, name: str) -> str | None:
    return page.get_attribute(f"#tile-{name}", "data-up")


def maps(page: Page) -> dict[int, list[str]]:
    rows = page.eval_on_selector_all("#user-map .row", "rows => rows.map(r => [r.id, r.dataset.replicas])")
    return {int(rid.removeprefix("user-")): [x for x in reps.split(",") if x] for rid, reps in rows}


def statuses(page: Page) -> dict[int, list[int]]:
    rows = page.eval_on_selector_all("#user-map .row", "rows => rows.map(r => [r.id, r.dataset.statuses])")
    return {int(rid.removeprefix("user-")): [int(x) for x in st.split(",") if x] for rid, st in rows}


def test_the_page_loads_without_errors_and_shows_every_service(page: Page) -> None:
    assert page.text_content("#mode-auth_mode") == "session"
    assert page.text_content("#mode-lb_mode") == "round_robin"
    for name in ("api-1", "api-2", "api-3", "auth", "redis", "nginx"):
        assert tile_up(page, name) == "true", name
    assert page.errors == []  # type: ignore[attr-defined]


def test_traffic_moves_every_replica_in_round_robin(page: Page) -> None:
    page.fill("#users", "12")
    page.click("#traffic-start")
    assert wait_until(
        lambda: all(float(page.get_attribute(f"#tile-api-{n}", "data-rps") or 0) > 0 for n in (1, 2, 3)), 20
    )

    def window() -> dict:
        return page.evaluate("JSON.parse(document.body.dataset.lastWindow || '{}')")

    assert wait_until(lambda: set(window().get("per_replica", {})) == {"api-1", "api-2", "api-3"}, 10)
    # Memory sessions under round robin: the wall of 401s shows in the status mix.
    assert wait_until(lambda: sum(401 in s for s in statuses(page).values()) >= 6, 10)


def test_sticky_turns_the_user_map_into_stripes(page: Page) -> None:
    page.click("button[data-lb=sticky]")
    page.wait_for_function("document.getElementById('mode-lb_mode').textContent === 'sticky'", timeout=2000)
    page.click("#relogin")  # logged in again behind sticky: each session on the replica its user is pinned to

    def striped() -> bool:
        m = maps(page)
        return len(m) == 12 and all(len(r) >= 8 and len(set(r[-8:])) == 1 for r in m.values())

    assert wait_until(striped, 20)
    assert wait_until(lambda: all(s[-4:] == [200] * 4 for s in statuses(page).values()), 20)
    # User 0's sessions, listed by the replica it is pinned to (GET /api/sessions).
    assert wait_until(lambda: page.locator("#sessions li").count() >= 1, 10)
    assert "(this one)" in (page.text_content("#sessions") or "")


def test_killing_a_replica_shows_it_and_exactly_its_users_lose_their_session(page: Page) -> None:
    pinned = {u: r[-1] for u, r in maps(page).items()}
    victims = {u for u, r in pinned.items() if r == "api-2"}
    page.click("#tile-api-2 button[data-action=kill]")
    assert wait_until(lambda: tile_up(page, "api-2") == "false", 5)
    page.wait_for_selector("#tile-api-2.down")

    def refused_users() -> set[int]:
        return {u for u, s in statuses(page).items() if s[-3:] == [401] * 3}

    assert wait_until(lambda: refused_users() == victims, 15), (refused_users(), victims)
    assert all(s[-1] == 200 for u, s in statuses(page).items() if u not in victims)
    page.click("#tile-api-2 button[data-action=start]")
    assert wait_until(lambda: tile_up(page, "api-2") == "true", 20)
    ROOT.joinpath("reports").mkdir(exist_ok=True)
    page.screenshot(path=str(ROOT / "reports" / "dashboard.png"), full_page=True)


def test_the_restart_form_follows_the_balancer_and_the_replay_reaches_every_replica(page: Page) -> None:
    # The balancer was switched to sticky by a button: the restart form shows the mode the cluster runs.
    assert page.input_value("#restart-lb_mode") == "sticky"
    assert page.input_value("#restart-auth_mode") == "session"
    # Under sticky, a replay through nginx would reach one replica only: each is asked directly.
    page.click("#revoke-replay")
    page.wait_for_function("document.getElementById('replay').textContent.includes('accepted')", timeout=10000)
    text = page.text_content("#replay") or ""
    for replica in ("api-1", "api-2", "api-3"):
        assert f"{replica} 401 \u00d72" in text, text  # "api-N 401 x2", as the page writes it
    assert "accepted after logout: 0" in text


def test_after_stop_the_charts_keep_time_moving_with_zeros_and_mark_the_stop(page: Page) -> None:
    def status_chart() -> dict:
        return page.evaluate(
            """() => { const c = Chart.getChart('chart-status');
                       const data = (label) => c.data.datasets.find(d => d.label === label).data;
                       return {n: c.data.labels.length, ok: data('200').slice(-3),
                               marks: data('action').filter(v => v !== null).length}; }"""
        )

    marks_before = status_chart()["marks"]
    page.click("#traffic-stop")
    assert wait_until(lambda: status_chart()["ok"] == [0, 0, 0], 10)
    moving = status_chart()["n"]
    assert wait_until(lambda: status_chart()["n"] > moving or moving >= 240, 5)  # time moves (or the window is full)
    assert status_chart()["marks"] > marks_before  # the stop is marked
    assert wait_until(lambda: (page.text_content("#tile-api-1 .meta") or "").endswith(" 0 req/s"), 10)


def test_the_fault_buttons_switch_the_proxy_and_show_it(page: Page, cluster: Cluster) -> None:
    from scaleout.lab.faults import fault_file, read_fault

    page.select_option("#fault-target", "auth")
    page.click("button[data-fault=latency][data-value='500ms']")
    assert wait_until(lambda: "auth: latency 500ms" in (page.text_content("#faults") or ""), 5)
    assert read_fault(fault_file(cluster.dir, "auth")).latency_s == 0.5  # what the proxy reads
    page.click("button[data-fault=clear]")
    assert wait_until(lambda: "auth: none" in (page.text_content("#faults") or ""), 5)
    assert read_fault(fault_file(cluster.dir, "auth")).latency_s == 0


def test_bad_input_is_refused_with_a_message_on_the_page(page: Page) -> None:
    result = page.evaluate(
        """async () => {
            const r = await fetch('/api/service', {method: 'POST',
              headers: {'Content-Type': 'application/json',
                        'X-Panel-Token': new URLSearchParams(location.search).get('token')},
              body: JSON.stringify({name: 'api-42', action: 'stop'})});
            return r.status;
        }"""
    )
    assert result == 422
    page.evaluate("post('/api/traffic', {action: 'start', users: 5000}).catch(() => {})")
    page.wait_for_function("document.getElementById('message').textContent.includes('422')", timeout=3000)
    # The browser logs the refused requests themselves; nothing else went wrong on the page.
    unexpected = [e for e in page.errors if "status of 422" not in e]  # type: ignore[attr-defined]
    assert unexpected == []


def test_requests_without_the_token_or_from_another_origin_are_refused(cluster: Cluster) -> None:
    base = f"http://127.0.0.1:{cluster.settings.lab_port}"
    token = panel_token(cluster.settings)
    json_headers = {"Content-Type": "application/json"}
    body = {"name": "api-1", "action": "stop"}
    assert httpx.post(f"{base}/api/service", json=body).status_code == 401
    assert httpx.post(f"{base}/api/service", json=body, headers={"X-Panel-Token": "wrong"}).status_code == 401
    foreign = {"X-Panel-Token": token, "Origin": "http://evil.example"}
    assert httpx.post(f"{base}/api/service", json=body, headers=foreign).status_code == 403
    rebinding = {"X-Panel-Token": token, "Host": "evil.example:8090"}
    assert httpx.post(f"{base}/api/service", json=body, headers=rebinding).status_code == 421
    form = {"X-Panel-Token": token, "Content-Type": "application/x-www-form-urlencoded"}
    assert httpx.post(f"{base}/api/service", content=b"name=api-1&action=stop", headers=form).status_code == 415
    assert httpx.get(f"{base}/api/state").status_code == 401
    assert httpx.get(f"{base}/api/state", params={"token": token}, headers=json_headers).status_code == 200
    assert cluster.status()[2].healthy  # nothing was stopped by any of them


def test_a_restart_with_the_near_cache_shows_each_replicas_hit_rate(page: Page) -> None:
    """Last: it restarts the cluster (session/redis, SESSION_CACHE=tracking) from the form."""
    errors_before = len(page.errors)  # type: ignore[attr-defined]  # earlier tests' refused input included
    page.select_option("#restart-session_store", "redis")
    page.select_option("#restart-lb_mode", "round_robin")
    page.select_option("#restart-session_cache", "tracking")
    page.click("#restart")
    assert wait_until(lambda: page.text_content("#mode-session_cache") == "tracking", 60), (
        page.text_content("#message"),
        page.text_content("#mode-session_cache"),
    )
    assert wait_until(lambda: page.text_content("#mode-session_store") == "redis", 5)
    assert wait_until(lambda: "restart: done" in (page.text_content("#message") or ""), 60)  # every service up
    page.click("#traffic-start")

    def hit_rates() -> list[float]:
        found = [page.get_attribute(f"#tile-api-{n}", "data-cache-hit-rate") or "" for n in (1, 2, 3)]
        return [float(x) for x in found if x]

    # Users loop on /api/me: after each replica's first reads, nearly everything comes from its cache.
    assert wait_until(lambda: len(hit_rates()) == 3 and min(hit_rates()) > 0.5, 30), (
        hit_rates(),
        page.text_content("#message"),
        page.text_content("#tile-api-1 .meta"),
    )
    assert "inval/s" in (page.text_content("#tile-api-1 .meta") or "")
    page.click("#traffic-stop")
    assert page.errors[errors_before:] == []  # type: ignore[attr-defined]
