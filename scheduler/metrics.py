"""What Prometheus scrapes: jobs, queues, nodes, GPUs and credits, read from the store at scrape time."""

from __future__ import annotations

from prometheus_client.core import GaugeMetricFamily
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from scheduler.models import Account, Attempt, Job, LedgerTransaction, Market, Node, NodeGpu, Op, Posting
from scheduler.states import ATTEMPT_HELD, AttemptState, JobState, NodeState


class StoreCollector:
    """A prometheus_client collector; each scrape opens one short read-only session."""

    def __init__(self, sessions: sessionmaker[Session]):
        self.sessions = sessions

    def collect(self):
        with self.sessions() as session:
            yield from self._jobs(session)
            yield from self._queues(session)
            yield from self._nodes(session)
            yield from self._credits(session)

    def _jobs(self, session: Session):
        family = GaugeMetricFamily("peergrid_jobs", "Jobs by state.", labels=["state"])
        counts = dict(session.execute(select(Job.state, func.count()).group_by(Job.state)).all())
        for state in JobState:
            family.add_metric([state.value], counts.get(state, 0))
        yield family

    def _queues(self, session: Session):
        waiting = GaugeMetricFamily("peergrid_queue_depth", "Attempts offered and not yet claimed, per market.", labels=["market"])
        running = GaugeMetricFamily("peergrid_attempts_running", "Attempts claimed or running, per market.", labels=["market"])
        by_state = session.execute(
            select(Market.slug, Attempt.state, func.count())
            .select_from(Attempt).join(Op, Op.id == Attempt.op_id).join(Market, Market.id == Op.market_id)
            .where(Attempt.state.in_([AttemptState.QUEUED, *ATTEMPT_HELD])).group_by(Market.slug, Attempt.state)
        ).all()
        slugs = session.scalars(select(Market.slug).order_by(Market.slug)).all()
        queued = {slug: 0 for slug in slugs}
        held = {slug: 0 for slug in slugs}
        for slug, state, count in by_state:
            (queued if state == AttemptState.QUEUED else held)[slug] += count
        for slug in slugs:
            waiting.add_metric([slug], queued[slug])
            running.add_metric([slug], held[slug])
        yield waiting
        yield running

    def _nodes(self, session: Session):
        nodes = GaugeMetricFamily("peergrid_nodes", "Nodes by state.", labels=["state"])
        counts = dict(session.execute(
            select(Node.state, func.count()).where(Node.removed_at.is_(None)).group_by(Node.state)).all())
        for state in NodeState:
            nodes.add_metric([state.value], counts.get(state, 0))
        yield nodes
        live = [NodeState.ONLINE, NodeState.BUSY, NodeState.DRAINING]
        gpus = GaugeMetricFamily("peergrid_gpus_online", "GPUs on live nodes, by model.", labels=["model", "simulated"])
        utilisation = GaugeMetricFamily("peergrid_gpu_utilization_percent", "Mean utilisation of online GPUs, by model.",
                                        labels=["model", "simulated"])
        rows = session.execute(
            select(NodeGpu.name, Node.simulated, func.count(), func.avg(NodeGpu.utilization_pct))
            .join(Node, Node.id == NodeGpu.node_id).where(Node.state.in_(live), Node.removed_at.is_(None))
            .group_by(NodeGpu.name, Node.simulated)
        ).all()
        for model, simulated, count, mean in rows:
            labels = [model, "true" if simulated else "false"]
            gpus.add_metric(labels, count)
            utilisation.add_metric(labels, float(mean or 0))
        yield gpus
        yield utilisation

    def _credits(self, session: Session):
        balances = GaugeMetricFamily("peergrid_credits_micro", "Credits held, by account kind (micro-credits).", labels=["kind"])
        for kind, total in session.execute(select(Account.kind, func.sum(Account.balance)).group_by(Account.kind)).all():
            balances.add_metric([kind.value], int(total or 0))
        yield balances
        settled = GaugeMetricFamily("peergrid_settled_micro", "Everything ever charged for attempts (micro-credits).")
        charged = session.scalar(
            select(func.coalesce(func.sum(Posting.amount), 0)).join(LedgerTransaction, LedgerTransaction.id == Posting.transaction_id)
            .where(LedgerTransaction.kind == "settle", Posting.amount < 0)
        ) or 0
        settled.add_metric([], -int(charged))
        yield settled
