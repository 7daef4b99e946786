"""Workflows with services, fast: an op that depends on a service starts when the service is
ready, endpoint and host literals, what ends a job that runs services and what it is billed, and
that only nodes that can serve endpoints get services; through the scheduler's functions on a real
SQLite store, with no containers and no broker. tests/test_endpoints_e2e.py proves a workflow with
a server and a client on real containers."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from protocol.messages import NodeReport
from scheduler.attempts import claim_attempt, claim_work, expire_overdue, lose_attempts, start_attempt
from scheduler.endpoints import announce_gateway, endpoint_url, mark_forwarded, mark_unforwarded
from scheduler.errors import Conflict
from scheduler.ledger import check_books
from scheduler.models import Attempt, Endpoint, Job, Node, Op
from scheduler.models.endpoints import Health
from scheduler.nodes import register
from scheduler.placing import run_pass
from scheduler.orchestration import cancel_job, extend_job
from scheduler.services import readiness_changed
from scheduler.states import AttemptState, utcnow
from tests import factories
from tests.test_workflow_rules import Flow, op


def service(key: str, port: int = 8000, **kw) -> dict:
    return op(key, "httpd -f", expose=port, **kw)


class Services(Flow):
    """A Flow whose services can be made ready, as a gateway does when it takes their forwards."""

    def ready(self, job_id: int, key: str, *, ready: bool = True) -> None:
        with self.core.transaction() as session:
            # As the gateway does: the endpoint rows are in the session when they are marked
            target = self._op(session, job_id, key)
            rows = list(session.scalars(select(Endpoint).where(Endpoint.op_id == target.id)))
            labels = [e.label for e in rows]
            announce_gateway(session, "gw-test", "127.0.0.1:1", "ssh-ed25519 AAAA", lease_s=3600)
            for row in rows:
                # and as its node does when the port passes its health checks
                row.health = Health.HEALTHY if ready else Health.UNHEALTHY
            for label in labels:
                if ready:
                    mark_forwarded(session, label, "gw-test")
                else:
                    mark_unforwarded(session, labels, "gw-test")
            readiness_changed(session, rows[0].op)

    def spec(self, job_id: int, key: str) -> dict:
        with self.core.transaction() as session:
            return dict(self._op(session, job_id, key).spec)

    def url(self, job_id: int, key: str) -> str:
        """The URL of the op's only endpoint, as the API shows it."""
        with self.core.transaction() as session:
            (endpoint,) = session.scalars(select(Endpoint).where(Endpoint.op_id == self._op(session, job_id, key).id))
            return endpoint_url(endpoint.label, self.core.settings.endpoint_domain)

    @staticmethod
    def _op(session, job_id: int, key: str) -> Op:
        return next(o for o in session.get(Job, job_id).ops if o.key == key)


@pytest.fixture
def flow(store_core) -> Services:
    """On SQLite, then PostgreSQL: readiness is read from rows another statement updated."""
    return Services(store_core)


def second_node(core, *, serves_endpoints: bool = True) -> int:
    node_id, _, _ = factories.node(core, name=f"other-{serves_endpoints}")
    with core.transaction() as session:
        register(session, session.get(Node, node_id), NodeReport(slots=8, serves_endpoints=serves_endpoints))
    return node_id


# -- dependents start when a service is ready ---------------------------------------------------


def test_an_op_that_depends_on_a_service_starts_when_the_service_is_ready_not_when_it_ends(flow):
    # Given a server and a client that depends on it
    job = flow.submit(service("server"), op("client", depends_on=["server"]))

    # When the server's container runs but its endpoint is not served yet
    flow.start(job, "server")
    # Then the client waits
    assert flow.states(job) == {"job": "running", "server": "running", "client": "pending"}

    # When the gateway takes the server's forward: the server is ready
    flow.ready(job, "server")
    # Then the client is offered, while the server runs on
    assert flow.states(job) == {"job": "running", "server": "running", "client": "queued"}

    # And the client ending does not end the job: its service runs until stopped
    flow.run(job, "client")
    assert flow.states(job) == {"job": "running", "server": "running", "client": "succeeded"}


def test_a_service_that_fails_before_it_is_ready_skips_what_depends_on_it(flow):
    job = flow.submit(service("server"), op("client", depends_on=["server"]))
    server = flow.start(job, "server")
    with flow.core.transaction() as session:
        from scheduler.attempts import finish_attempt

        finish_attempt(session, session.get(Node, flow.node_id), server, exit_code=1)
    assert flow.states(job) == {"job": "failed", "server": "failed", "client": "skipped"}
    assert "'server', which it depends on, did not succeed" in flow.error(job, "client")


def test_a_later_group_starts_once_the_services_of_the_groups_before_it_are_ready(flow):
    # Given a service in a first group, and an op of a second group
    job = flow.submit(service("server", group="serve"), op("client", group="use"))
    flow.start(job, "server")
    assert flow.states(job)["client"] == "pending"
    # When the service is ready, the next group's turn has come
    flow.ready(job, "server")
    assert flow.states(job)["client"] == "queued"


def test_a_service_whose_results_a_later_op_reads_must_end_before_that_op_starts(flow):
    # Given a lobby that exposes a port and hands a result to a later group (Nosana's server.json)
    lobby = {**service("lobby", group="lobby"), "results": {"worker": "worker=(.*)"}}
    job = flow.submit(lobby, op("user", group="run", env={"WORKER": "%%ops.lobby.results.worker%%"}))
    lobby = flow.start(job, "lobby")
    flow.ready(job, "lobby")
    # Then being ready is not enough: its results exist only once it ends
    assert flow.states(job)["user"] == "pending"
    with flow.core.transaction() as session:
        from scheduler.attempts import finish_attempt

        finish_attempt(session, session.get(Node, flow.node_id), lobby, exit_code=0)
    assert flow.states(job)["user"] == "queued"


def test_a_sidecar_of_a_service_starts_with_it_and_stops_when_it_is_cancelled(flow):
    job = flow.submit(service("server"), op("sidecar", depends_on=["server"], stop_if=True))
    flow.start(job, "server")
    assert flow.states(job)["sidecar"] == "queued"  # started is enough for a sidecar
    with flow.core.transaction() as session:
        cancel_job(session, session.get(Job, job))
    assert flow.states(job) == {"job": "cancelled", "server": "cancelled", "sidecar": "cancelled"}


def test_a_service_placed_again_keeps_its_url_and_what_depends_on_it_runs_on(flow):
    # Given a ready server and its client running
    job = flow.submit(service("server"), op("client", "wget -O- %%ops.server.endpoint.8000%%", depends_on=["server"]))
    flow.start(job, "server")
    url = flow.url(job, "server")
    flow.ready(job, "server")
    other = second_node(flow.core)
    client = flow.waiting(job, "client")
    with flow.core.transaction() as session:
        node = session.get(Node, other)
        claim_attempt(session, node, client)
        start_attempt(session, node, client)

    # When the server's node is lost
    with flow.core.transaction() as session:
        lose_attempts(session, session.get(Node, flow.node_id), "the test pulled its plug.")

    # Then the server is offered again and the client keeps running
    assert flow.states(job) == {"job": "running", "server": "queued", "client": "running"}
    with flow.core.transaction() as session:
        (row,) = session.scalars(select(Endpoint)).all()
        assert row.closed_at is not None and not row.forwards
    # And once placed again, the server answers at the URL it had, the one the client was given
    flow.start(job, "server")
    assert flow.url(job, "server") == url and url in flow.spec(job, "client")["cmd"]
    with flow.core.transaction() as session:
        (row,) = session.scalars(select(Endpoint)).all()
        assert row.closed_at is None and row.attempt.number == 2


# -- literals -----------------------------------------------------------------------------------


def test_endpoint_and_host_literals_resolve_to_the_url_and_the_job_network_name(flow):
    # Given a client that names the server by host and by endpoint, and a server with a Nosana op id
    job = flow.submit(
        service("gpt-oss:120b"),
        op("client", depends_on=["gpt-oss:120b"], env={
            "URL": "%%ops.gpt-oss:120b.endpoint.8000%%", "HOST": "%%ops.gpt-oss:120b.host%%",
            "DEPLOYED": "%%ops.gpt-oss:120b.deployment_endpoint%%"}),
    )
    flow.start(job, "gpt-oss:120b")
    flow.ready(job, "gpt-oss:120b")
    env = flow.spec(job, "client")["env"]
    url = flow.url(job, "gpt-oss:120b")
    assert env["URL"] == url == env["DEPLOYED"]
    assert url.startswith("http://") and url.endswith(f".{flow.core.settings.endpoint_domain}/")
    from protocol.names import op_slug

    assert env["HOST"] == op_slug("gpt-oss:120b") != "gpt-oss:120b"


def test_an_endpoint_literal_resolves_before_its_service_runs_and_names_the_url_it_gets(flow):
    # Given, as in Nosana's worker.json, a first group that hands on the URL of a service of the
    # next group, and a service that names its own URL
    job = flow.submit(
        op("lobby", "register %%ops.proxy.endpoint.80%%", group="lobby"),
        op("proxy", "serve %%ops.proxy.endpoint.80%%", group="run", expose=80),
    )
    # Then the lobby has the URL at once, before the proxy was even offered
    announced = flow.spec(job, "lobby")["cmd"].split()[1]
    assert flow.states(job)["proxy"] == "pending"
    flow.run(job, "lobby")
    flow.start(job, "proxy")
    # And the proxy serves at that very URL, which it was told too
    assert flow.url(job, "proxy") == announced == flow.spec(job, "proxy")["cmd"].split()[1]


def test_a_client_on_its_services_node_gets_the_job_network_address_and_elsewhere_the_url(flow):
    job = flow.submit(
        service("server"),
        op("near", "wget %%ops.server.endpoint.8000%%index.html", depends_on=["server"]),
        op("far", "wget %%ops.server.endpoint.8000%%index.html", depends_on=["server"]),
    )
    flow.start(job, "server")
    flow.ready(job, "server")
    url = flow.url(job, "server")
    other = second_node(flow.core)
    with flow.core.transaction() as session:
        near = claim_work(session, session.get(Node, flow.node_id), flow.waiting(job, "near")).order
        far = claim_work(session, session.get(Node, other), flow.waiting(job, "far")).order
    # On the server's own node the URL becomes its name on the job network, on its own port
    assert near.spec["cmd"] == "wget http://server:8000/index.html"
    # Elsewhere it stays the URL at the gateway; the op's stored spec keeps the URL either way
    assert far.spec["cmd"] == f"wget {url}index.html"
    assert flow.spec(job, "near")["cmd"] == f"wget {url}index.html"


# -- ending and billing -------------------------------------------------------------------------


def test_a_job_of_services_runs_until_cancelled_and_is_billed_per_second_while_they_ran(flow):
    # Given a ready server whose client has ended: only the service remains
    job = flow.submit(service("server"), op("client", depends_on=["server"]))
    server = flow.start(job, "server")  # started ten seconds ago
    flow.ready(job, "server")
    flow.run(job, "client")
    assert flow.states(job)["job"] == "running"

    # When its owner cancels it
    with flow.core.transaction() as session:
        cancel_job(session, session.get(Job, job))
        attempt = session.get(Attempt, server)
        price = attempt.op.market.price_per_second
        books = check_books(session)
        job_row = session.get(Job, job)
        assert job_row.reserved == 0

    # Then the service is billed for the seconds it ran, and the job ends
    assert attempt.state == AttemptState.CANCELLED
    assert 10 * price <= attempt.cost <= 12 * price and "µcr/s" in attempt.cost_note
    assert flow.states(job) == {"job": "cancelled", "server": "cancelled", "client": "succeeded"}
    assert books.balanced, books.problems


def test_extending_a_job_of_services_gives_the_running_service_more_time_and_reserves_it(flow):
    job = flow.submit(service("server", timeout=60))
    server = flow.start(job, "server")
    with flow.core.transaction() as session:
        before = session.get(Job, job).max_cost
        gained = extend_job(session, session.get(Job, job), 120)
        row = session.get(Job, job)
        assert gained == 120 and row.max_cost > before
        assert session.get(Attempt, server).op.timeout_s == 180
    # And a node that vanished is caught only past the new limit
    with flow.core.transaction() as session:
        assert expire_overdue(session, grace_s=1, now=utcnow() + timedelta(seconds=100)) == []
    with flow.core.transaction() as session:
        (expired,) = expire_overdue(session, grace_s=1, now=utcnow() + timedelta(seconds=300))
        assert expired.id == server
    assert flow.states(job) == {"job": "failed", "server": "failed"}


def test_a_service_that_times_out_on_its_node_ends_its_job_billed_for_its_time(flow):
    from scheduler.attempts import finish_attempt

    job = flow.submit(service("server", timeout=10))
    server = flow.start(job, "server")
    with flow.core.transaction() as session:
        finish_attempt(session, session.get(Node, flow.node_id), server, exit_code=143,
                       error="The container timed out after 10 seconds and was stopped.")
        attempt = session.get(Attempt, server)
        assert attempt.cost > 0 and session.get(Job, job).reserved == 0
    assert flow.states(job) == {"job": "failed", "server": "failed"}


# -- only nodes with a job network get services -------------------------------------------------


def test_a_service_is_placed_only_on_a_node_that_serves_endpoints(flow):
    # Given the flow's node, which serves endpoints, made unable to, and another node that cannot either
    with flow.core.transaction() as session:
        session.get(Node, flow.node_id).serves_endpoints = False
    bare = second_node(flow.core, serves_endpoints=False)
    flow.submit(service("server"), op("plain"))

    # When a pass places: the plain op is placed, the service waits and says why
    with flow.core.transaction() as session:
        run_pass(session, half_life_s=3600, claim_within_s=5)
    with flow.core.transaction() as session:
        attempts = {a.op.key: a for a in session.scalars(select(Attempt))}
        assert attempts["plain"].placed_node_id in (flow.node_id, bare)
        assert attempts["server"].placed_node_id is None
        assert "can serve the ports it exposes" in attempts["server"].waiting

    # When a node that serves endpoints joins, the next pass places the service there
    serving = second_node(flow.core, serves_endpoints=True)
    with flow.core.transaction() as session:
        run_pass(session, half_life_s=3600, claim_within_s=5)
    with flow.core.transaction() as session:
        server = next(a for a in session.scalars(select(Attempt)) if a.op.key == "server")
        assert (server.placed_node_id, server.waiting) == (serving, None)


def test_a_node_without_a_job_network_is_refused_a_service_and_takes_other_work(flow):
    # Given a node that reported it cannot serve endpoints
    bare = second_node(flow.core, serves_endpoints=False)
    with flow.core.transaction() as session:
        assert session.get(Node, bare).serves_endpoints is False
    job = flow.submit(service("server"), op("plain"))

    # When it tries to claim the service, it is refused with why; a plain op it may take
    with flow.core.transaction() as session:
        node = session.get(Node, bare)
        with pytest.raises(Conflict, match="--job-network none"):
            claim_attempt(session, node, flow.waiting(job, "server"))
    with flow.core.transaction() as session:
        claim_attempt(session, session.get(Node, bare), flow.waiting(job, "plain"))
    # And the service waits for a node that can serve it
    flow.start(job, "server")
    assert flow.states(job)["server"] == "running"


def test_a_service_no_node_can_serve_now_says_on_its_job_why_it_waits(flow):
    with flow.core.transaction() as session:
        register(session, session.get(Node, flow.node_id), NodeReport(slots=8, serves_endpoints=False))
    job = flow.submit(service("server"), op("plain"))
    with flow.core.transaction() as session:
        from scheduler.events import job_events

        said = [e.message for e in job_events(session, session.get(Job, job)) if e.kind == "waiting"]
    assert said == ["server: no node up now can serve the ports it exposes (each runs its containers without a "
                    "network, --job-network none); it waits for one that can."]


def test_a_node_report_says_whether_the_node_serves_endpoints_and_old_workers_do():
    assert NodeReport.from_wire(NodeReport(serves_endpoints=False).to_wire()).serves_endpoints is False
    assert NodeReport.from_wire({}).serves_endpoints is True


def test_a_worker_takes_offers_from_its_own_queue_alone_and_reports_whether_it_serves_endpoints(tmp_path):
    from worker.agent import Agent
    from worker.settings import WorkerSettings
    from protocol.messages import MarketSpec, Registration

    def queues(network: str) -> list[str]:
        agent = Agent(WorkerSettings(server="http://127.0.0.1:9", token="t", job_network=network, simulate_gpus="",
                                     events=False, data_dir=tmp_path / network))
        agent.registration = Registration(cluster_id="c", node_id=7, node_name="n", node_state="online",
                                          broker_url="", heartbeat_interval_s=10, markets=())
        agent._markets = (MarketSpec(slug="cpu", queue="market.cpu"),)
        assert agent.report().serves_endpoints is (network != "none")
        return agent.queues()

    # The scheduler places: what a node runs comes on its own queue, services only to one that serves them
    assert queues("bridge") == ["node.7"]
    assert queues("none") == ["node.7"]


# -- Nosana's own definitions -------------------------------------------------------------------

COMPAT = Path(__file__).resolve().parents[2] / "shared" / "compat" / "nosana"


@pytest.mark.parametrize("name", ["worker.json", "worker2.json", "grpc.json", "server.json"])
def test_nosanas_definitions_that_name_other_ops_resolve_what_they_can_at_once(flow, name):
    if not COMPAT.is_dir():
        pytest.skip("the compat definitions are not beside this checkout")
    document = json.loads((COMPAT / name).read_text())
    with flow.core.transaction() as session:
        from scheduler.jobs import submit_job
        from scheduler.models import User

        job = submit_job(session, session.get(User, flow.user_id), document, default_timeout_s=600)
        offered = {o.key: json.dumps(o.spec) for o in job.ops if o.state.value == "queued"}
        failed = {o.key: o.error for o in job.ops if o.state.value == "failed"}
    # Every op whose turn has come is offered with its endpoint and host literals resolved
    assert offered and not failed, failed
    for key, spec in offered.items():
        assert "%%ops." not in spec, (key, spec)
    if name == "worker.json":
        # The lobby of the first group hands on the URL the proxy of the next group will have
        assert f".{flow.core.settings.endpoint_domain}/" in offered["lobby"]


def test_an_ops_container_answers_to_its_op_id_as_a_host_name_and_to_its_aliases():
    from protocol.names import op_slug
    from worker.networks import network_aliases

    assert network_aliases("server", "db") == ("server", "db")
    # A Nosana op id that is no host name answers to its slug, which %%ops.ID.host%% names; an alias
    # a literal made into something that is no host name is dropped
    assert network_aliases("gpt-oss:120b", ["web", "not a name", "a.b-c"]) == (op_slug("gpt-oss:120b"), "web", "a.b-c")
