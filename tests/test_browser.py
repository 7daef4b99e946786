"""The three journeys in a real browser against the real stack, a crawl of every link, and
screenshots of each main page at laptop and phone widths (written to tests/artifacts/screenshots)."""

from __future__ import annotations

import re
import shlex
import time
from pathlib import Path
from urllib.parse import urljoin, urlparse

import pytest

from tests import factories
from tests.factories import PASSWORD, hello_world
from tests.stack import Api, Stack

SHOTS = Path(__file__).parent / "artifacts" / "screenshots"
WIDTHS = {"laptop": 1280, "phone": 390}


@pytest.fixture(scope="module")
def live(tmp_path_factory, sqlite_template, docker_client, browser):
    from tests.conftest import TEST_IMAGE

    root = tmp_path_factory.mktemp("browser")
    db = root / "store.sqlite"
    db.write_bytes(sqlite_template.read_bytes())
    with Stack(root, database_url=f"sqlite:///{db}", broker_url=f"sqla+sqlite:///{root / 'broker.sqlite'}",
                  extra_env={"PEERGRID_MIN_PAYOUT": "0.00001", "PEERGRID_HEARTBEAT_INTERVAL": "1"}) as stack:
        stack.start_web()
        stack.start_scheduler()
        _, cpu_token, _ = factories.node(stack.core, name="cpu-box")
        stack.start_worker(cpu_token, name="cpu-box")
        factories.user(stack.core, email="admin@example.com", admin=True)
        stack.image = TEST_IMAGE
        yield stack


def new_page(browser, width="laptop"):
    context = browser.new_context(viewport={"width": WIDTHS[width], "height": 900})
    page = context.new_page()
    page.set_default_timeout(30_000)
    return page


def sign_in(page, live, email, password=PASSWORD):
    page.goto(live.url + "/login")
    page.fill("#email", email)
    page.fill("#password", password)
    page.click("button[type=submit]")
    page.wait_for_url(re.compile(r".*/(jobs)?$"))


def sign_up(page, live, email):
    page.goto(live.url + "/login")
    page.click("text=Create one")
    page.fill("#email", email)
    page.fill("#password", PASSWORD)
    page.fill("#confirm", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(live.url + "/")


def shoot(page, name):
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def test_submitter_signs_up_submits_from_a_template_and_watches_it_run(live, browser):
    page = new_page(browser)
    sign_up(page, live, "submitter@example.com")
    assert "Welcome to peergrid" in page.content()
    assert page.locator(".topbar .balance").inner_text().startswith("100")

    page.click("nav >> text=Submit")
    page.click("[data-template=nosana-count]")
    page.fill("#image", live.image)
    page.dispatch_event("#image", "change")
    page.wait_for_selector("#check .ok-text")
    assert "It will reserve at most" in page.inner_text("#check")
    # A broken edit is reported by path before anything is posted.
    page.fill("#definition", '{"version": "0.1", "ops": [{"id": "x", "type": "container/run", "args": {}}]}')
    page.wait_for_selector("#check .problems")
    assert "$.ops[0].args.image" in page.inner_text("#check")
    assert page.is_disabled("#submit-button")
    page.click("[data-template=nosana-count]")
    page.fill("#image", live.image)
    page.dispatch_event("#image", "change")
    page.wait_for_selector("#check .ok-text")
    page.click("#submit-button")
    page.wait_for_url(re.compile(r".*/jobs/\d+$"))

    # Log lines arrive while it runs, then the page shows it succeeded with its cost.
    # (A locator rather than wait_for_function: the page's CSP forbids evaluating strings, rightly.)
    page.locator("#logs .line").nth(2).wait_for(timeout=60_000)
    assert page.inner_text("#job-state") in ("running", "succeeded")
    page.wait_for_selector("#job-state .state-succeeded", timeout=60_000)
    page.wait_for_selector("#attempts")
    assert "× 1 core × 100 µcr/s" in page.inner_text("#attempts")
    lines = page.locator("#logs .line").all_inner_texts()
    assert [line.removeprefix("run-from-cli").strip() for line in lines] == [str(i) for i in range(1, 11)]
    shoot(page, "job-laptop")


def test_provider_registers_a_node_starts_it_with_the_shown_command_and_earns(live, browser):
    page = new_page(browser)
    sign_up(page, live, "provider@example.com")
    page.click("nav >> text=Nodes")
    page.fill("#node-name", "rig-1")
    page.click("#register-node button")
    command = page.inner_text("#worker-command")
    assert command.startswith("PEERGRID_NODE_TOKEN=pgn_") and command.endswith(f" peergrid worker --server {live.url}")

    assignment, _, *args = shlex.split(command)
    token = assignment.removeprefix("PEERGRID_NODE_TOKEN=")
    args += ["--simulate-gpus", "NVIDIA GeForce RTX 4090:24", "--job-network", "none"]
    live.spawn("provider-worker", *args, env={"PEERGRID_NODE_TOKEN": token})
    page.goto(live.url + "/nodes")
    deadline = time.monotonic() + 30
    while page.locator("section.node .state-online").count() == 0:
        assert time.monotonic() < deadline, live.logs()
        time.sleep(0.5)
        page.reload()
    assert "simulated GPUs" in page.content() and "NVIDIA GeForce RTX 4090" in page.content()

    # A GPU job can only run on this node: it earns from it.
    _, token = factories.user(live.core, email="gpu-user@example.com")
    api = Api(live.url, token)
    doc = hello_world(live.image, cmd="sleep 1; echo trained")
    doc["ops"][0]["args"]["gpu"] = True
    job = api.wait(api.post("/jobs", doc).json()["id"], timeout=60)
    assert job["state"] == "succeeded" and job["ops"][0]["node"]["name"] == "rig-1"
    page.reload()
    earned = re.search(r"earned ([0-9.]+) credits", page.inner_text("section.node"))
    assert earned and float(earned.group(1)) > 0
    shoot(page, "nodes-laptop")


def test_provider_asks_for_a_payout_an_admin_approves_and_the_books_balance(live, browser):
    provider = new_page(browser)
    sign_in(provider, live, "provider@example.com")
    provider.click("nav >> text=Credits")
    earnings = provider.get_attribute("#payout-credits", "placeholder")
    assert float(earnings) > 0
    provider.fill("#payout-credits", earnings)
    provider.click("text=Request payout")
    assert "requested; an admin will review it" in provider.content()

    admin = new_page(browser)
    sign_in(admin, live, "admin@example.com")
    admin.click("nav >> text=Payouts")
    row = admin.locator("tr", has_text="provider@example.com")
    row.locator("input[name=reference]").fill("BANK-0001")
    row.locator("text=Approve").click()
    assert "approved" in admin.content()
    admin.click("nav >> text=Ledger")
    assert "The books balance." in admin.inner_text("#books")
    provider.reload()
    assert "BANK-0001" in provider.content() and "state-approved" in provider.content()


def _crawl(page, live) -> dict[str, int]:
    """Visit every same-site link reachable from the overview; return each page's status."""
    seen: dict[str, int] = {}
    queue = ["/"]
    while queue and len(seen) < 200:
        path = queue.pop(0)
        if path in seen:
            continue
        if "/artifacts/" in path or urlparse(path).path.endswith(".csv"):
            seen[path] = page.request.get(live.url + path).status
            continue
        response = page.goto(live.url + path)
        seen[path] = response.status
        if response.status >= 400:
            continue
        heading = page.inner_text("h1") if page.locator("h1").count() else ""
        assert heading not in ("Not found", "Server error", "Cannot do that"), (path, heading)
        for href in page.eval_on_selector_all("a[href]", "els => els.map(e => e.getAttribute('href'))"):
            target = urlparse(urljoin(live.url + path, href))
            if target.netloc == urlparse(live.url).netloc and target.path not in ("/logout",):
                link = target.path + (f"?{target.query}" if target.query else "")
                if link not in seen:
                    queue.append(link)
    return seen


@pytest.mark.parametrize("who", ["provider@example.com", "admin@example.com"])
def test_every_link_works_for_a_user_and_an_admin(live, browser, who):
    page = new_page(browser)
    sign_in(page, live, who)
    statuses = _crawl(page, live)
    broken = {path: status for path, status in statuses.items() if status >= 400}
    assert not broken, broken
    assert len(statuses) > 10
    if who.startswith("admin"):
        assert {"/admin/payouts", "/admin/ledger", "/admin/users", "/admin/markets"} <= set(statuses)


def test_an_array_shows_its_progress_and_is_cancelled_from_its_page(live, browser):
    # Given someone who submitted an array of four jobs that each run for a while
    _, token = factories.user(live.core, email="sweeper@example.com", credits=100)
    api = Api(live.url, token)
    created = api.http.post(api.url + "/jobs", params={"array": "0-3%2"}, timeout=10,
                            json=hello_world(live.image, ["sleep", "30"]))
    assert created.status_code == 201, created.text
    array_id = created.json()["id"]
    # When they open it from the jobs list
    page = new_page(browser)
    sign_in(page, live, "sweeper@example.com")
    page.goto(live.url + "/jobs")
    page.click(f"text=array #{array_id} >> nth=0")
    page.wait_for_url(f"{live.url}/arrays/{array_id}")
    # Then the page shows its progress, a bar and its four jobs by index
    assert page.text_content("#array-progress").startswith("0/4 done")
    assert page.locator("#array-jobs tbody tr").count() == 4
    assert page.locator("svg.progress-bar rect.seg").count() >= 1
    shoot(page, "array-laptop")
    # When they cancel it from there, every job ends cancelled
    page.on("dialog", lambda dialog: dialog.accept())
    page.click("text=Cancel array")
    page.wait_for_url(f"{live.url}/arrays/{array_id}")
    assert page.text_content("#array-progress") == "4/4 done: 4 cancelled"
    assert page.locator("text=Cancel array").count() == 0
    assert {job["state"] for job in api.get("/jobs")["jobs"]} == {"cancelled"}
    phone = new_page(browser, "phone")
    sign_in(phone, live, "sweeper@example.com")
    phone.goto(f"{live.url}/arrays/{array_id}")
    assert phone.evaluate("document.documentElement.scrollWidth - window.innerWidth") <= 1, _widest(phone)
    shoot(phone, "array-phone")


MAIN_PAGES = ["/", "/jobs", "/submit", "/nodes", "/credits", "/account", "/admin/payouts", "/admin/ledger",
              "/admin/users", "/admin/markets"]


@pytest.mark.parametrize("width", WIDTHS)
def test_screenshots_of_each_main_page(live, browser, width):
    page = new_page(browser, width)
    sign_in(page, live, "admin@example.com")
    for path in MAIN_PAGES:
        response = page.goto(live.url + path)
        assert response.status == 200, path
        # Nothing spills sideways on a phone: the page is no wider than the screen.
        overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 1, (path, overflow, _widest(page))
        shoot(page, f"{(path.strip('/') or 'overview').replace('/', '-')}-{width}")
    anon = new_page(browser, width)
    anon.goto(live.url + "/login")
    shoot(anon, f"login-{width}")
    anon.goto(live.url + "/signup")
    shoot(anon, f"signup-{width}")


def _widest(page) -> str:
    """The element that sticks out furthest to the right, for a failure message."""
    return page.evaluate("""() => { let worst = null, right = 0;
      for (const el of document.querySelectorAll('body *')) { const r = el.getBoundingClientRect().right;
        if (r > right) { right = r; worst = el; } }
      return worst ? worst.tagName + '.' + worst.className + '#' + worst.id + ' ' + Math.round(right) : ''; }""")
