"""A stateful property test of the ledger: random grants, submits, runs, cancels, extensions,
node losses and payouts never unbalance the books or take a person's account below zero."""

from __future__ import annotations

import shutil
import tempfile
from datetime import timedelta
from pathlib import Path

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule
from sqlalchemy import select

from scheduler import ledger
from scheduler.accounts import create_user
from scheduler.attempts import claim_attempt, finish_attempt, start_attempt
from scheduler.core import Core
from scheduler.errors import Conflict, PeergridError
from scheduler.jobs import submit_job
from scheduler.models import Account, Attempt, Job, Node, Payout, User
from scheduler.nodes import NodeReport, create_node, reap_silent_nodes, register
from scheduler.orchestration import cancel_job, extend_job
from scheduler.settings import Settings
from scheduler.states import JOB_FINISHED, utcnow
from tests.factories import hello_world

TEMPLATE: Path | None = None


@pytest.fixture(autouse=True, scope="module")
def _template(sqlite_template):
    global TEMPLATE
    TEMPLATE = sqlite_template


class Marketplace(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.root = Path(tempfile.mkdtemp())
        shutil.copy(TEMPLATE, self.root / "store.sqlite")
        self.core = Core.from_settings(Settings.from_env(
            {"PEERGRID_DATABASE_URL": f"sqlite:///{self.root / 'store.sqlite'}",
             "PEERGRID_BROKER_URL": f"sqla+sqlite:///{self.root / 'broker.sqlite'}", "PEERGRID_SECRET_KEY": "x"},
            data_dir=self.root))
        self.clock = utcnow()

    def teardown(self):
        self.core.close()
        shutil.rmtree(self.root, ignore_errors=True)

    def tick(self, seconds: float) -> None:
        self.clock += timedelta(seconds=seconds)

    @initialize()
    def people(self):
        with self.core.transaction() as session:
            self.users = [create_user(session, f"u{i}@example.com", "password1").id for i in range(2)]
            self.admin = create_user(session, "admin@example.com", "password1", is_admin=True).id
            provider = create_user(session, "provider@example.com", "password1")
            self.provider = provider.id
            self.nodes = []
            for name in ("n1", "n2"):
                node, _ = create_node(session, provider, name)
                register(session, node, NodeReport(slots=8), now=self.clock)
                self.nodes.append(node.id)

    @rule(who=st.integers(0, 1), credits=st.integers(1, 3_000_000))
    def grant(self, who, credits):
        with self.core.transaction() as session:
            ledger.grant(session, session.get(User, self.users[who]), credits)

    @rule(who=st.integers(0, 1), timeout=st.integers(1, 7200), retries=st.integers(0, 2))
    def submit(self, who, timeout, retries):
        doc = hello_world("busybox")
        doc["ops"][0]["args"].update(timeout=timeout, retries=retries)
        try:
            with self.core.transaction() as session:
                submit_job(session, session.get(User, self.users[who]), doc, default_timeout_s=3600)
        except ledger.InsufficientCredits:
            pass

    def _start_one(self, session, data):
        """Start a queued attempt on a random node (brought back online if the reaper took it); or None."""
        queued = session.scalars(select(Attempt).where(Attempt.state == "queued").order_by(Attempt.id)).all()
        if not queued:
            return None, None
        attempt = data.draw(st.sampled_from(queued))
        node = session.get(Node, data.draw(st.sampled_from(self.nodes)))
        if node.state.value == "offline":
            register(session, node, NodeReport(slots=8), now=self.clock)
        claim_attempt(session, node, attempt.id, now=self.clock)
        start_attempt(session, node, attempt.id, now=self.clock)
        return node, attempt

    @rule(data=st.data(), seconds=st.floats(0, 9000), code=st.sampled_from([0, 0, 1]))
    def run_one(self, data, seconds, code):
        with self.core.transaction() as session:
            node, attempt = self._start_one(session, data)
            if attempt is not None:
                finish_attempt(session, node, attempt.id, exit_code=code, now=self.clock + timedelta(seconds=seconds))

    @rule(data=st.data(), seconds=st.floats(0, 500))
    def start_one(self, data, seconds):
        with self.core.transaction() as session:
            self._start_one(session, data)
        self.tick(seconds)

    @rule(data=st.data())
    def cancel(self, data):
        with self.core.transaction() as session:
            jobs = session.scalars(select(Job).where(Job.state.not_in(list(JOB_FINISHED)))).all()
            if jobs:
                cancel_job(session, data.draw(st.sampled_from(jobs)), now=self.clock)

    @rule(data=st.data(), seconds=st.integers(1, 20_000))
    def extend(self, data, seconds):
        try:
            with self.core.transaction() as session:
                jobs = session.scalars(select(Job).where(Job.state.not_in(list(JOB_FINISHED)))).all()
                if jobs:
                    extend_job(session, data.draw(st.sampled_from(jobs)), seconds, now=self.clock)
        except (ledger.InsufficientCredits, Conflict):
            pass

    @rule(seconds=st.integers(31, 120))
    def nodes_fall_silent(self, seconds):
        self.tick(seconds)
        with self.core.transaction() as session:
            reap_silent_nodes(session, timeout_s=30, now=self.clock)

    @rule(amount=st.integers(1, 5_000_000))
    def request_payout(self, amount):
        try:
            with self.core.transaction() as session:
                ledger.request_payout(session, session.get(User, self.provider), amount, minimum=1)
        except PeergridError:
            pass

    @rule(data=st.data(), approve=st.booleans())
    def decide_payout(self, data, approve):
        with self.core.transaction() as session:
            open_ = session.scalars(select(Payout).where(Payout.state == "requested")).all()
            if not open_:
                return
            payout = data.draw(st.sampled_from(open_))
            admin = session.get(User, self.admin)
            if approve:
                ledger.approve_payout(session, admin, payout.id, "ref-1")
            else:
                ledger.reject_payout(session, admin, payout.id, "not now")

    @invariant()
    def the_books_balance(self):
        with self.core.sessions() as session:
            books = ledger.check_books(session)
            assert books.balanced, books.problems

    @invariant()
    def no_person_is_below_zero(self):
        with self.core.sessions() as session:
            assert session.scalar(select(Account.id).where(Account.user_id.is_not(None), Account.balance < 0)) is None


TestMarketplace = Marketplace.TestCase
TestMarketplace.settings = settings(max_examples=40, stateful_step_count=25, deadline=None)
