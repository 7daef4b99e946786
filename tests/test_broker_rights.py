"""A remote worker's broker user, made as the README says: enough to run jobs, refused everything else.

The README's `redis-cli … ACL SETUSER` and `rabbitmqctl` lines are run as written (on a Redis database
and a RabbitMQ node of the tests' own), then a real worker process takes its offers with that user.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import subprocess
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest
import redis
from amqp.exceptions import AccessRefused
from celery.events.event import get_exchange
from kombu import Connection, Exchange, Queue

from tests import factories
from tests.conftest import REDIS_URL, need
from tests.stack import Stack, free_port
from worker.broker import DEFAULT_EXCHANGE, connect, consume_offers
from worker.events import event_hostname

README = Path(__file__).resolve().parents[1] / "README.md"
# A database of these tests' own: other tests empty database 0 as they start.
BROKER_DB = 13


def readme_commands(program: str) -> list[str]:
    """The README's commands that run program for the worker's user, continuation lines joined."""
    lines = README.read_text().replace("\\\n", " ").splitlines()
    found = [line for line in lines if line.startswith(program + " ") and "peergrid-worker" in line]
    assert found, f"the README gives no {program} command for the worker's user"
    return found


def offer_body(queue: str) -> dict:
    return {"attempt_id": 1, "job_id": 1, "op": "hello-world", "market": queue.split(".", 1)[1], "queue": queue}


def publish(url: str, queue: str, body: dict) -> None:
    """Publish an offer as the scheduler does: on the default exchange, routed by queue name."""
    with Connection(url) as connection:
        connection.Producer(serializer="json").publish(
            body, exchange=DEFAULT_EXCHANGE, routing_key=queue,
            declare=[Queue(queue, DEFAULT_EXCHANGE, routing_key=queue, durable=True)],
        )


def run_job(stack: Stack, image: str) -> dict:
    """Start web, scheduler and one worker on stack, submit hello-world and wait for its end."""
    api = stack.start_with_node("remote-node")
    created = api.post("/jobs", factories.hello_world(image))
    assert created.status_code == 201, created.text
    job = api.wait(created.json()["id"], timeout=90)
    assert job["state"] == "succeeded", stack.logs()
    assert [line["text"] for line in api.get(f"/jobs/{job['id']}/logs")["lines"]] == ["hello world"]
    return job


def worker_log(stack: Stack) -> str:
    return next(log.read_text() for name, _, log in stack.processes if name == "worker")


def stop_worker(stack: Stack) -> None:
    for name, process, _ in stack.processes:
        if name == "worker" and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            process.wait(30)


# -- Redis ---------------------------------------------------------------------------------


@pytest.fixture
def redis_broker():
    """The test Redis's database BROKER_DB, empty; yield its URL (the default user) and a client."""
    parts = urlsplit(REDIS_URL)
    url = urlunsplit(parts._replace(path=f"/{BROKER_DB}"))
    try:
        admin = redis.Redis.from_url(url)
        admin.ping()
    except redis.RedisError:
        admin = None
    need(admin is not None, f"Redis at {REDIS_URL}")
    need(shutil.which("redis-cli") is not None, "redis-cli")
    admin.flushdb()
    yield url, admin
    admin.flushdb()


@pytest.fixture
def redis_worker_url(redis_broker):
    """A broker URL for a user the README's ACL line makes; yield it and the user's name.

    The line is run as written but for three things: a name of this test's own (the Redis is shared),
    and, since the database is not 0, that database's event channels and `+select`.
    """
    url, admin = redis_broker
    (line,) = readme_commands("redis-cli")
    user, password = f"peergrid-worker-test-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    assert "peergrid-worker " in line and "'&/0.celeryev/" in line
    line = line.replace("peergrid-worker ", f"{user} ").replace("'&/0.celeryev/", f"'&/{BROKER_DB}.celeryev/")
    made = subprocess.run(["bash", "-c", line + " +select"], capture_output=True, text=True, timeout=30,
                          env={**os.environ, "PEERGRID_BROKER_URL": url, "WORKER_PASSWORD": password})
    assert made.returncode == 0 and made.stdout.strip() == "OK", made.stdout + made.stderr
    parts = urlsplit(url)
    try:
        yield urlunsplit(parts._replace(netloc=f"{user}:{password}@{parts.hostname}:{parts.port}")), user
    finally:
        admin.acl_deluser(user)


def refused_for(admin: redis.Redis, user: str) -> list[str]:
    """What Redis refused the user, from its ACL log: 'command …', 'key …' or 'channel …'."""
    text = lambda value: value.decode() if isinstance(value, bytes) else str(value)
    found = []
    for entry in admin.acl_log(count=1000):
        entry = {text(k): text(v) for k, v in entry.items()}
        if entry.get("username") == user:
            found.append(f"{entry['reason']} {entry['object']}")
    return found


def worker_events(admin: redis.Redis) -> redis.client.PubSub:
    """Listen to every worker event on the broker, as Flower does."""
    events = admin.pubsub()
    events.psubscribe(f"/{BROKER_DB}.celeryev/*")
    return events


def heard_from(events: redis.client.PubSub, hostname: str) -> set[str]:
    kinds = set()
    while (message := events.get_message(timeout=0.1)) is not None:
        if message["type"] == "pmessage":
            body = json.loads(base64.b64decode(json.loads(message["data"])["body"]))
            if body["hostname"] == hostname:
                kinds.add(body["type"])
    return kinds


def test_a_worker_with_the_readme_redis_user_runs_a_job_and_is_refused_nothing(
    tmp_path, sqlite_url, test_image, redis_broker, redis_worker_url
):
    url, admin = redis_broker
    worker_url, user = redis_worker_url
    events = worker_events(admin)
    # Given a server that hands workers the README's Redis user
    with Stack(tmp_path, database_url=sqlite_url, broker_url=url,
               extra_env={"PEERGRID_WORKER_BROKER_URL": worker_url}) as stack:
        # When a job is submitted, the worker takes its offer and runs it
        run_job(stack, test_image)
        stop_worker(stack)

        # Then the worker's events reached Flower's channel, and Redis refused it nothing on the way
        assert {"worker-online", "worker-offline"} <= heard_from(events, event_hostname("remote-node"))
        assert refused_for(admin, user) == []
        assert "cannot send worker events" not in worker_log(stack)
        assert "unexpected error" not in worker_log(stack)


def test_an_offer_a_redis_worker_puts_back_or_still_holds_when_it_stops_returns_to_its_queue(
    redis_broker, redis_worker_url
):
    url, admin = redis_broker
    worker_url, user = redis_worker_url
    publish(url, "market.cpu", offer_body("market.cpu"))
    seen = []

    def on_offer(body, message):
        seen.append(body)
        if len(seen) == 1:
            message.requeue()  # as the agent does when its capacity changed since it asked
        # the second time it is held, unacknowledged, until the consumer stops

    connection = connect(worker_url)
    try:
        consume_offers(connection, lambda: ["market.cpu", "node.1"], on_offer, can_take=lambda: True,
                       stopping=lambda: len(seen) >= 2, idle_wait=time.sleep)
    finally:
        connection.release()
    assert seen == [offer_body("market.cpu")] * 2
    assert admin.llen("market.cpu") == 1
    assert refused_for(admin, user) == []
    # and kombu kept no copy of it in the `unacked` keys the scheduler's own tasks use
    assert not admin.exists("unacked", "unacked_index")


def test_the_readme_redis_user_is_refused_what_a_worker_must_not_do(redis_broker, redis_worker_url):
    url, admin = redis_broker
    worker_url, user = redis_worker_url
    # Given the scheduler's queue holds a task, kombu's tables and unacknowledged tasks exist
    admin.lpush("scheduler", '{"task": "peergrid.reap_silent_nodes"}')
    admin.hset("unacked", "tag", "[]")
    admin.sadd("_kombu.binding.scheduler", "scheduler")
    worker = redis.Redis.from_url(worker_url)
    other_events = worker.pubsub()

    def subscribe():
        other_events.psubscribe(f"/{BROKER_DB}.celeryev/*")
        other_events.get_message(timeout=1)

    forbidden = {
        "read the scheduler's queue": lambda: worker.lrange("scheduler", 0, -1),
        "take the scheduler's tasks": lambda: worker.rpop("scheduler"),
        "send the scheduler a task": lambda: worker.lpush("scheduler", "{}"),
        "delete the scheduler's queue": lambda: worker.delete("scheduler"),
        "read the scheduler's unacknowledged tasks": lambda: worker.hgetall("unacked"),
        "read kombu's bindings": lambda: worker.smembers("_kombu.binding.scheduler"),
        "delete a market queue": lambda: worker.delete("market.cpu"),
        "list keys": lambda: worker.keys("*"),
        "scan keys": lambda: worker.scan(),
        "empty the database": worker.flushdb,
        "read the configuration": lambda: worker.config_get("*"),
        "run a script": lambda: worker.eval("return 1", 0),
        "publish a task event": lambda: worker.publish(f"/{BROKER_DB}.celeryev/task.succeeded", "{}"),
        "publish elsewhere": lambda: worker.publish("anything", "{}"),
        "listen to others' events": subscribe,
        "list the clients": lambda: worker.client_list(),
        "list the users": lambda: worker.acl_list(),
    }
    allowed = []
    for what, attempt in forbidden.items():
        try:
            attempt()
        except redis.exceptions.NoPermissionError:
            continue
        allowed.append(what)
    # Then each is refused, and nothing of the scheduler's moved
    assert allowed == []
    assert admin.lrange("scheduler", 0, -1) == [b'{"task": "peergrid.reap_silent_nodes"}']
    assert admin.hgetall("unacked") == {b"tag": b"[]"} and admin.dbsize() == 3
    # What it may do is what taking offers needs; Redis cannot tell putting an offer back from adding
    # one, so it can add offers too (the README says why that does no harm)
    assert worker.llen("market.cpu") == 0
    assert worker.lpush("market.cpu", json.dumps(offer_body("market.cpu"))) == 1
    assert worker.brpop(["market.cpu", "node.7"], timeout=1) is not None


# -- RabbitMQ ------------------------------------------------------------------------------

RABBITMQ_BIN = Path(os.environ.get("PEERGRID_TEST_RABBITMQ_BIN", "/usr/lib/rabbitmq/bin"))


@pytest.fixture(scope="module")
def rabbitmq(tmp_path_factory):
    """A RabbitMQ node of these tests' own on loopback ports; yield guest's URL and rabbitmqctl's environment."""
    need((RABBITMQ_BIN / "rabbitmq-server").exists(), f"RabbitMQ in {RABBITMQ_BIN} (Debian's rabbitmq-server)")
    root = tmp_path_factory.mktemp("rabbitmq")
    port, dist_port, epmd_port = free_port(), free_port(), free_port()
    (root / "rabbitmq.conf").write_text(f"listeners.tcp.default = 127.0.0.1:{port}\n")
    (root / "enabled_plugins").write_text("[].\n")
    loopback = "-kernel inet_dist_use_interface {127,0,0,1}"
    env = {
        **os.environ,
        "HOME": str(root),  # where the node and rabbitmqctl find the same Erlang cookie
        "PATH": f"{RABBITMQ_BIN}:{os.environ['PATH']}",
        "RABBITMQ_NODENAME": f"peergrid-test-{port}@localhost",
        "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
        "RABBITMQ_NODE_PORT": str(port),
        "RABBITMQ_DIST_PORT": str(dist_port),
        "ERL_EPMD_ADDRESS": "127.0.0.1",
        "ERL_EPMD_PORT": str(epmd_port),
        "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": loopback,
        "RABBITMQ_CTL_ERL_ARGS": loopback,
        "RABBITMQ_CONFIG_FILE": str(root / "rabbitmq"),
        "RABBITMQ_ADVANCED_CONFIG_FILE": str(root / "advanced.config"),
        "RABBITMQ_CONF_ENV_FILE": str(root / "rabbitmq-env.conf"),
        "RABBITMQ_ENABLED_PLUGINS_FILE": str(root / "enabled_plugins"),
        "RABBITMQ_MNESIA_BASE": str(root / "mnesia"),
        "RABBITMQ_LOG_BASE": str(root / "log"),
    }
    log = root / "server.log"
    process = subprocess.Popen([str(RABBITMQ_BIN / "rabbitmq-server")], env=env, stdout=log.open("w"),
                               stderr=subprocess.STDOUT, start_new_session=True)
    url = f"amqp://guest:guest@127.0.0.1:{port}//"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with Connection(url, connect_timeout=2) as connection:
                    connection.ensure_connection(max_retries=1)
                break
            except Exception:
                assert process.poll() is None and time.monotonic() < deadline, (
                    "RabbitMQ did not start:\n" + log.read_text()
                )
                time.sleep(0.5)
        yield url, env
    finally:
        subprocess.run(["rabbitmqctl", "stop"], env=env, capture_output=True, timeout=60)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        subprocess.run(["epmd", "-port", str(epmd_port), "-kill"], env=env, capture_output=True, timeout=10)


@pytest.fixture
def rabbitmq_worker_url(rabbitmq):
    """A broker URL for a user the README's rabbitmqctl lines make, on a vhost of this test's own."""
    url, env = rabbitmq
    vhost, password = f"peergrid-test-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex

    def ctl(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["rabbitmqctl", "-q", *args], env=env, capture_output=True, text=True, timeout=60)

    assert ctl("add_vhost", vhost).returncode == 0
    assert ctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*").returncode == 0
    for line in readme_commands("rabbitmqctl"):
        made = subprocess.run(["bash", "-c", line], capture_output=True, text=True, timeout=60,
                              env={**env, "VHOST": vhost, "WORKER_PASSWORD": password})
        assert made.returncode == 0, made.stdout + made.stderr
    host = urlsplit(url).netloc.split("@", 1)[1]
    try:
        yield f"amqp://guest:guest@{host}/{vhost}", f"amqp://peergrid-worker:{password}@{host}/{vhost}"
    finally:
        ctl("delete_vhost", vhost)
        ctl("delete_user", "peergrid-worker")


def test_a_worker_with_the_readme_rabbitmq_user_runs_a_job(tmp_path, sqlite_url, test_image, rabbitmq_worker_url):
    url, worker_url = rabbitmq_worker_url
    with Connection(url) as admin:
        # Flower's view: a queue of ours bound to the event exchange, declared as Celery declares it
        heard = Queue("flower-like", get_exchange(admin), routing_key="worker.#", auto_delete=True)
        heard(admin.default_channel).declare()
        # Given a server that hands workers the README's RabbitMQ user
        with Stack(tmp_path, database_url=sqlite_url, broker_url=url,
                   extra_env={"PEERGRID_WORKER_BROKER_URL": worker_url}) as stack:
            # When a job is submitted, the worker takes its offer and runs it
            run_job(stack, test_image)
            stop_worker(stack)
            # Then its worker events went out
            kinds = set()
            while (message := heard(admin.default_channel).get(no_ack=True)) is not None:
                if message.payload["hostname"] == event_hostname("remote-node"):
                    kinds.add(message.payload["type"])
            assert {"worker-online", "worker-offline"} <= kinds, worker_log(stack)
            assert "cannot send worker events" not in worker_log(stack)


def test_the_readme_rabbitmq_user_cannot_publish_offers_or_touch_the_scheduler(rabbitmq_worker_url):
    url, worker_url = rabbitmq_worker_url
    scheduler = Exchange("scheduler", type="direct")
    with Connection(url) as admin:
        Queue("scheduler", scheduler, routing_key="scheduler")(admin.default_channel).declare()
        admin.Producer(serializer="json").publish({"task": "peergrid.reap_silent_nodes"}, exchange=scheduler,
                                                  routing_key="scheduler")

    def publish_offer(channel):
        channel.basic_publish(channel.prepare_message(json.dumps(offer_body("market.cpu")).encode()), exchange="",
                              routing_key="market.cpu")
        channel.queue_declare("market.cpu", passive=True)  # a refused publish closes the channel by now

    forbidden = {
        "publish an offer": publish_offer,
        "send the scheduler a task": lambda channel: (
            channel.basic_publish(channel.prepare_message(b"{}"), exchange="scheduler", routing_key="scheduler"),
            channel.queue_declare("market.cpu", passive=True),
        ),
        "take the scheduler's tasks": lambda channel: channel.basic_get("scheduler"),
        "delete the scheduler's queue": lambda channel: channel.queue_delete("scheduler"),
        "make a queue of its own": lambda channel: channel.queue_declare("anything"),
        "bind a queue to the scheduler's exchange": lambda channel: channel.queue_bind("market.cpu", "scheduler", "x"),
    }
    allowed = []
    with Connection(worker_url, transport_options={"confirm_publish": True}) as worker:
        # What it may do is what taking offers needs
        Queue("market.cpu", DEFAULT_EXCHANGE, routing_key="market.cpu", durable=True)(worker.default_channel).declare()
        for what, attempt in forbidden.items():
            channel = worker.channel()
            try:
                attempt(channel)
            except AccessRefused:
                continue
            finally:
                try:
                    channel.close()
                except Exception:  # the broker closed it when it refused
                    pass
            allowed.append(what)
    assert allowed == []
    with Connection(url) as admin:
        assert admin.default_channel.queue_declare("scheduler", passive=True).message_count == 1
        assert admin.default_channel.queue_declare("market.cpu", passive=True).message_count == 0
