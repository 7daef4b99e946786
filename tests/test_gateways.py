"""More than one gateway: every node tunnels each endpoint to every live gateway, so any of them
serves any endpoint; the heartbeat answer carries the live gateways, so a node follows them as
they come and go; a gateway that vanishes without stopping stops counting once its lease runs out."""

from __future__ import annotations

import asyncio

from sqlalchemy import func, select

from gateway.service import Gateway
from scheduler.endpoints import forwarders, live_gateways
from scheduler.models import Endpoint, EndpointForward, Node
from scheduler.nodes import NodeReport, heartbeat
from tests.factories import bearer
from tests.test_gateway import _get, _service, _until, claimed, in_a_loop_of_its_own, service
from worker.gateways import Gateways

LEASE_S = 1.0


def _gateway(core, tmp_path, name: str) -> Gateway:
    """A gateway of its own name, data dir (so its own host key) and ports, with a short lease."""
    settings = core.settings.with_overrides(gateway_name=name, gateway_lease_s=LEASE_S, data_dir=tmp_path / name)
    return Gateway(core, settings, ssh_port=0, http_port=0)


async def _vanish(gateway: Gateway) -> None:
    """What kill -9 leaves: its sockets gone, its rows in the store as they were, its lease not renewed."""

    async def gone(work):
        raise OSError("the gateway's process is gone")

    gateway._store = gone
    gateway._sweeper.cancel()
    gateway._http.close()
    gateway._ssh.close()
    for connection in list(gateway.connections):
        connection.abort()


def test_two_gateways_serve_one_endpoint_and_a_node_follows_them_as_they_come_and_go(client, core, tmp_path):
    job_id, node_id, node_token, attempt_id, token = claimed(client, core, service())
    with core.transaction() as session:
        label = session.scalar(select(Endpoint.label))
    # (its node reports the port healthy: readiness turns on the gateways alone from here)
    healthy = {"ports": [{"port": 8000, "state": "healthy"}]}
    assert client.post(f"/api/v1/node/attempts/{attempt_id}/health", json=healthy,
                       headers=bearer(node_token)).status_code == 200

    def beat():
        """One heartbeat of the node, as the server answers it: the gateways it should tunnel to."""
        with core.transaction() as session:
            answer = heartbeat(session, session.get(Node, node_id), NodeReport(slots=1, running=(attempt_id,)))
        return answer.gateways

    def store(work):
        with core.transaction() as session:
            return work(session)

    def ready() -> bool:
        return client.get(f"/api/v1/jobs/{job_id}", headers=bearer(token)).json["ops"][0]["endpoints"][0]["ready"]

    async def scenario():
        loop = asyncio.get_running_loop()
        off = loop.run_in_executor
        target = await asyncio.start_server(_service, "127.0.0.1", 0)
        target_port = target.sockets[0].getsockname()[1]
        first, second = _gateway(core, tmp_path, "first"), _gateway(core, tmp_path, "second")
        await first.start()
        node = Gateways(node_id, node_token)
        try:
            # Given a node that registered while one gateway ran, and forwards its endpoint there
            listed = await off(None, beat)
            assert [g.name for g in listed] == ["first"]
            await off(None, node.follow, listed)
            assert node.open(label, 8000, target_port)
            assert await _until(lambda: _held(first, label, node))

            # When a second gateway starts, the node hears of it at its next heartbeat and forwards there too
            await second.start()
            listed = await off(None, beat)
            assert [g.name for g in listed] == ["first", "second"]
            assert listed[0].host_key != listed[1].host_key
            await off(None, node.follow, listed)
            assert await _until(lambda: _held(second, label, node))

            # Then either gateway serves the endpoint, and the store says both forward it
            for gateway in (first, second):
                assert await _get(gateway.http_port, f"{label}.localhost:{gateway.http_port}") == (200, b"hello\n")
            assert await off(None, store, lambda s: forwarders(s, label)) == ["first", "second"]
            assert await off(None, ready)

            # When the first is killed: its sockets go, its rows stay, its lease is not renewed
            await _vanish(first)
            # Then the second still serves, and the endpoint stays ready (it is)
            assert await _get(second.http_port, f"{label}.localhost:{second.http_port}") == (200, b"hello\n")
            assert await off(None, ready)
            # And once its lease runs out, its forward stops counting though its row is still there,
            # and heartbeats no longer name it, so the node stops dialling it
            assert await _until(lambda: _forwarded_by(store, label, ["second"]), timeout=LEASE_S * 5)
            assert await off(None, store, lambda s: s.scalar(select(func.count()).select_from(EndpointForward))) == 2
            listed = await off(None, beat)
            assert [g.name for g in listed] == ["second"]
            await off(None, node.follow, listed)
            assert node.names() == ["second"] and await off(None, ready)

            # When the second stops as it should, it says so: nothing forwards the endpoint, and it is not ready
            await second.stop()
            assert await off(None, store, lambda s: forwarders(s, label)) == []
            assert await off(None, store, lambda s: [g.name for g in live_gateways(s)]) == []
            assert await off(None, beat) == ()
            assert not await off(None, ready)
            # And a gateway started later gets the node's forward from the next heartbeat
            again = _gateway(core, tmp_path, "first")
            await again.start()
            await off(None, node.follow, await off(None, beat))
            assert await _until(lambda: _held(again, label, node))
            assert await _get(again.http_port, f"{label}.localhost:{again.http_port}") == (200, b"hello\n")
            assert await off(None, ready)
            await again.stop()
        finally:
            await off(None, node.stop)
            target.close()
            if second._sweeper is not None and not second._sweeper.done():
                await second.stop()

    in_a_loop_of_its_own(scenario())


async def _held(gateway: Gateway, label: str, node: Gateways) -> bool:
    """Both ends hold label's forward: the gateway took it, and the node's tunnel to it heard so."""
    return gateway.forwards.get(label) is not None and gateway.name in node.forwarded_by(label)


async def _forwarded_by(store, label: str, names: list[str]) -> bool:
    return await asyncio.get_running_loop().run_in_executor(None, store, lambda s: forwarders(s, label)) == names


def test_a_gateways_renewal_mends_its_forwards_in_the_store_and_a_lapsed_lease_is_not_handed_out(client, core):
    from datetime import timedelta

    from scheduler.endpoints import announce_gateway, gateway_refs, mark_forwarded, renew_gateway, withdraw_gateway
    from scheduler.states import utcnow

    claimed(client, core, service())
    now = utcnow()
    with core.transaction() as session:
        label = session.scalar(select(Endpoint.label))
        announce_gateway(session, "a", "127.0.0.1:1", "ssh-ed25519 AAAA", lease_s=10, now=now)
        mark_forwarded(session, label, "a", now=now)
        assert forwarders(session, label, now=now) == ["a"]
        # When a node's old connection closing removed the row of the forward its new one holds
        session.execute(EndpointForward.__table__.delete())
        assert forwarders(session, label, now=now) == []
        # Then the gateway's next renewal puts it back; and removes one it no longer holds
        assert renew_gateway(session, "a", [label], lease_s=10, now=now)
        assert forwarders(session, label, now=now) == ["a"]
        assert renew_gateway(session, "a", [], lease_s=10, now=now)
        assert forwarders(session, label, now=now) == []
        # And a lease that ran out is neither handed to nodes nor counted; a renewed one is again
        mark_forwarded(session, label, "a", now=now)
        later = now + timedelta(seconds=11)
        assert gateway_refs(session, now=later) == () and forwarders(session, label, now=later) == []
        assert renew_gateway(session, "a", [label], lease_s=10, now=later)
        assert [g.name for g in gateway_refs(session, now=later)] == ["a"]
        assert forwarders(session, label, now=later) == ["a"]
        # And one that stopped is not renewed: it must announce itself again
        withdraw_gateway(session, "a", now=later)
        assert not renew_gateway(session, "a", [label], lease_s=10, now=later)
        assert gateway_refs(session, now=later) == ()
