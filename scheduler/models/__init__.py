"""The job store's tables."""

from scheduler.models.accounts import ApiToken, User
from scheduler.models.artifacts import Artifact
from scheduler.models.base import Base
from scheduler.models.cluster import Cluster
from scheduler.models.endpoints import Endpoint, EndpointForward, Gateway
from scheduler.models.events import JobEvent
from scheduler.models.jobs import Attempt, Job, LogLine, Op
from scheduler.models.joining import JoinToken
from scheduler.models.liveness import Lease, Listener
from scheduler.models.ledger import Account, AccountKind, LedgerTransaction, Payout, PayoutState, Posting
from scheduler.models.markets import Market
from scheduler.models.nodes import Node, NodeGpu
from scheduler.models.scheduling import JobArray, Quota, Usage
from scheduler.models.secrets import Secret

__all__ = [
    "Account",
    "AccountKind",
    "LedgerTransaction",
    "Payout",
    "PayoutState",
    "Posting",
    "ApiToken",
    "JoinToken",
    "Lease",
    "Listener",
    "Artifact",
    "Attempt", "Base", "Endpoint", "EndpointForward", "Gateway", "Cluster", "Job", "JobEvent", "LogLine", "Market", "Node", "NodeGpu", "Op", "Secret", "User",
    "JobArray", "Quota", "Usage"]
