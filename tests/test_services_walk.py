"""Services on the embedded set-up, as people meet them: the README's "A service, start to stop"
run word for word, and the gallery's web server submitted from the dashboard and opened from its
job page. One stack (web, scheduler, gateway, a worker whose containers have a network) serves both."""

from __future__ import annotations

import html
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from tests import factories
from tests.factories import PASSWORD
from tests.stack import Api, Stack

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()

pytestmark = [pytest.mark.docker, pytest.mark.timeout(300)]


def readme_blocks(heading: str) -> list[str]:
    """The ```sh blocks under a ### heading of the README, in order."""
    start = README.index(f"\n### {heading}\n")
    end = README.find("\n#", start + 1)
    return re.findall(r"```sh\n(.*?)```", README[start:end], flags=re.S)


@pytest.fixture(scope="module")
def stack(tmp_path_factory, sqlite_template, docker_client, test_image):
    root = tmp_path_factory.mktemp("services")
    store = root / "store.sqlite"
    store.write_bytes(sqlite_template.read_bytes())
    with Stack(root, database_url=f"sqlite:///{store}", broker_url=f"sqla+sqlite:///{root / 'broker.sqlite'}") as stack:
        stack.start_web()
        stack.start_scheduler()
        stack.start_gateway()
        _, node_token, _ = factories.node(stack.core, name="rig")
        # As `peergrid up` starts its worker: job containers on the engine's bridge network.
        stack.start_worker(node_token, "--job-network", "bridge")
        stack.image = test_image
        yield stack


def _through_gateway(stack: Stack, url: str) -> requests.Response:
    """GET url as a browser would: Python does not resolve *.localhost, so dial the gateway and name
    the endpoint in Host."""
    host = url.removeprefix("http://").rstrip("/")
    return requests.get(f"http://127.0.0.1:{stack.gateway_port}/", headers={"Host": host}, timeout=10)


def test_the_readme_walks_a_service_from_submit_to_stop(stack, tmp_path):
    (walk,) = readme_blocks("A service, start to stop")
    _, token = factories.user(stack.core)
    env = {**stack.env, "PEERGRID_SERVER": stack.url, "PEERGRID_TOKEN": token, "JOB_IMAGE": stack.image,
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run(["bash", "-euxo", "pipefail", "-c", walk], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, (done.stdout, done.stderr, stack.logs())
    lines = done.stdout.splitlines()
    job_id, ready = lines[0], lines[1]
    url = re.fullmatch(r"web  8080  (http://[a-z2-7]{10}\.localhost:\d+/)", ready).group(1)
    assert url.endswith(f".localhost:{stack.gateway_port}/")
    assert lines[2:] == ["hello from a service", f"web  8080  {url}  ready", f"job {job_id}: cancelled", "404"], done.stdout
    job = Api(stack.url, token).get(f"/jobs/{job_id}")
    assert job["state"] == "cancelled" and job["ops"][0]["endpoints"][0]["ready"] is False


def test_the_galleries_web_server_opens_from_its_job_page(stack):
    email = "gallery@example.com"
    factories.user(stack.core, email=email)
    browser = requests.Session()

    def csrf(text: str) -> str:
        return re.search(r'name="csrf_token" value="([^"]+)"', text).group(1)

    login = browser.get(stack.url + "/login", timeout=10).text
    assert browser.post(stack.url + "/login", data={"email": email, "password": PASSWORD, "csrf_token": csrf(login)},
                        timeout=10).ok
    # The template as the editor holds it, with "Run with image" set to an image this engine has.
    page = browser.get(stack.url + "/submit?template=web-server", timeout=10).text
    document = json.loads(html.unescape(re.search(r'<textarea id="definition"[^>]*>(.*?)</textarea>', page, re.S).group(1)))
    for op in document["ops"]:
        op["args"]["image"] = stack.image
    posted = browser.post(stack.url + "/submit", data={"definition": json.dumps(document), "csrf_token": csrf(page)},
                          allow_redirects=False, timeout=10)
    assert posted.status_code == 302, posted.text
    job_page = stack.url + posted.headers["Location"]

    # The job page shows the endpoint as a link with a ready badge once its tunnel is up.
    deadline = time.monotonic() + 60
    while not (found := re.search(r'<a href="(http://[^"]+)" target="_blank" rel="noopener">[^<]+</a></td>\s*'
                                  r'<td><span class="state state-ready">', browser.get(job_page, timeout=10).text)):
        assert time.monotonic() < deadline, stack.logs()
        time.sleep(0.2)
    link = found.group(1)
    # And the link serves what the template's httpd serves.
    deadline = time.monotonic() + 20
    while (answer := _through_gateway(stack, link)).status_code != 200 and time.monotonic() < deadline:
        time.sleep(0.2)  # the tunnel is up; httpd may still be starting
    assert answer.status_code == 200 and answer.text == "hello from peergrid\n", (answer.status_code, answer.text)
    job_id = posted.headers["Location"].rsplit("/", 1)[1]
    cancel = browser.get(job_page, timeout=10).text
    browser.post(f"{stack.url}/jobs/{job_id}/cancel", data={"csrf_token": csrf(cancel)}, timeout=10)
