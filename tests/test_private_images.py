"""A private image a node pulled with one person's registry login does not run for someone without it."""

from __future__ import annotations

import pytest
from docker.errors import ImageNotFound

from tests import factories
from tests.conftest import need
from tests.factories import hello_world
from tests.registry import ImageRegistry
from tests.stack import Api, Stack

LOGIN = ("ann", "reg-pass-5d2c9e81f7a4")


def private(image: str) -> str:
    return (f"The image {image!r} is private on this node: it was pulled with a registry login and the registry "
            "does not hand it out without one. Give registry credentials in args.authentication.docker.")


@pytest.fixture
def stack(tmp_path, sqlite_url, test_image):
    with Stack(tmp_path, database_url=sqlite_url, broker_url=f"sqla+sqlite:///{tmp_path / 'broker.sqlite'}") as stack:
        stack.start_web()
        stack.start_scheduler()
        _, stack.node_token, _ = factories.node(stack.core, name="rig")
        stack.start_worker(stack.node_token)
        yield stack


def person(stack: Stack) -> Api:
    _, token = factories.user(stack.core)
    return Api(stack.url, token)


def keep_password(api: Api, password: str) -> None:
    assert api.http.put(f"{api.url}/secrets/REGISTRY", json={"value": password}, timeout=10).status_code == 201


def run(api: Api, image: str, registry: ImageRegistry | None = None) -> dict:
    """Run `echo ran` in image, with the login (its password from the REGISTRY secret) when registry is given."""
    doc = hello_world(image, cmd="echo ran")
    if registry is not None:
        doc["ops"][0]["args"]["authentication"] = {
            "docker": {"username": LOGIN[0], "password": "%%secrets.REGISTRY%%", "server": registry.address}}
    created = api.post("/jobs", doc)
    assert created.status_code == 201, created.text
    job = api.wait(created.json()["id"])
    return {**job["ops"][0], "job_id": job["id"]}


def test_a_private_image_runs_only_for_those_who_give_the_login(stack, docker_client, test_image):
    """Given ann's job that pulled a private image with her login, when bob names it without a login,
    by name or by id, then his op fails saying the image is private here, also after the worker
    restarts; a wrong login fails at the registry; with the right login bob's op pulls and runs."""
    registry = ImageRegistry(docker_client, test_image, login=LOGIN)
    image_id = None
    try:
        ann, bob, eve = person(stack), person(stack), person(stack)
        keep_password(ann, LOGIN[1])
        keep_password(eve, "a-wrong-password")

        ran = run(ann, registry.reference, registry)
        need(bool(registry.manifest_requests), "A Docker engine that reaches the test's loopback registry")
        assert ran["state"] == "succeeded", stack.logs()
        image_id = docker_client.images.get(registry.reference).id
        assert [line["text"] for line in ann.get(f"/jobs/{ran['job_id']}/logs")["lines"]] == ["ran"]

        wrong = run(eve, registry.reference, registry)
        by_name = run(bob, registry.reference)
        by_id = run(bob, image_id.removeprefix("sha256:")[:12])
        public = run(bob, test_image)

        assert wrong["state"] == "failed" and wrong["node"]["name"] == "rig"
        assert wrong["error"].startswith(
            f"The image {registry.reference!r} could not be pulled with the registry login in args.authentication.docker")
        assert (by_name["state"], by_name["node"]["name"], by_name["error"]) == ("failed", "rig", private(registry.reference))
        assert by_id["state"] == "failed" and "is private on this node" in by_id["error"]
        assert public["state"] == "succeeded"

        logins_seen = len(registry.manifest_requests)
        keep_password(bob, LOGIN[1])
        with_login = run(bob, registry.reference, registry)
        assert with_login["state"] == "succeeded", stack.logs()
        assert len(registry.manifest_requests) > logins_seen  # the registry checked bob's login

        stack.restart("worker", lambda: stack.start_worker(stack.node_token))
        after_restart = run(bob, registry.reference)
        assert (after_restart["state"], after_restart["error"]) == ("failed", private(registry.reference))
    finally:
        registry.close()
        if image_id is not None:
            try:
                docker_client.images.remove(image_id, force=True)
            except ImageNotFound:
                pass
