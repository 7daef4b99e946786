"""Secrets: values a person keeps on the server and their jobs reference as %%secrets.NAME%%.

A value leaves the store only in the claim answer, to the node that won the op, and is replaced
by *** wherever it shows up in what that node reports.
"""

from __future__ import annotations

from typing import Any, Iterable

from sqlalchemy import select
from sqlalchemy.orm import Session

from scheduler.errors import NotFound, PeergridError, Problem, SecretMissing
from scheduler.models import Job, Op, Secret, User
from scheduler.references import LITERAL, SECRET_NAME, check_name, secret_names, secret_references
from scheduler.states import utcnow

MASK = "***"
MAX_VALUE_CHARS = 65_536
# Lines of a multi-line value shorter than this are not masked on their own: "}" or "" would
# blank out every log.
_MIN_MASKED_LINE = 4


def set_secret(session: Session, owner: User, name: str, value: str) -> tuple[Secret, bool]:
    """Store a secret of owner's, or replace its value; return it and whether it is new.

    Raises:
        PeergridError: the name or the value is unusable.
    """
    check_name(name)
    if not isinstance(value, str) or not value:
        raise PeergridError("A secret needs a value: a non-empty string.")
    if "\x00" in value:
        raise PeergridError("A secret's value cannot contain NUL characters.")
    if len(value) > MAX_VALUE_CHARS:
        raise PeergridError(f"A secret's value can be at most {MAX_VALUE_CHARS} characters long.")
    row = session.scalar(select(Secret).where(Secret.owner_id == owner.id, Secret.name == name))
    now = utcnow()
    if row is None:
        row = Secret(owner_id=owner.id, name=name, value=value, created_at=now, updated_at=now)
        session.add(row)
        session.flush()
        return row, True
    row.value = value
    row.updated_at = now
    return row, False


def delete_secret(session: Session, owner: User, name: str) -> None:
    """Delete a secret of owner's.

    Raises:
        NotFound: owner has no secret of that name.
    """
    row = session.scalar(select(Secret).where(Secret.owner_id == owner.id, Secret.name == name))
    if row is None:
        raise NotFound(f"You have no secret {name}.")
    session.delete(row)


def secrets_of(session: Session, owner: User) -> list[Secret]:
    return list(session.scalars(select(Secret).where(Secret.owner_id == owner.id).order_by(Secret.name)))


def values_of(session: Session, owner_id: int, names: Iterable[str] | None = None) -> dict[str, str]:
    """The values of owner's secrets, all of them or those named."""
    query = select(Secret.name, Secret.value).where(Secret.owner_id == owner_id)
    if names is not None:
        query = query.where(Secret.name.in_(list(names)))
    return {name: value for name, value in session.execute(query)}


def job_masks(session: Session, job_id: int) -> list[str]:
    """What to mask in the logs of a job: every secret of its owner's."""
    values = session.scalars(select(Secret.value).join(Job, Job.owner_id == Secret.owner_id).where(Job.id == job_id))
    return masks(values)


def missing_secrets(session: Session, owner: User, document: Any) -> list[Problem]:
    """A problem for each reference in a definition to a secret owner does not have."""
    wanted = [(path, name) for path, name in secret_references(document) if SECRET_NAME.match(name)]
    if not wanted:
        return []
    have = set(values_of(session, owner.id, {name for _, name in wanted}))
    return [
        Problem(
            path,
            f"There is no secret {name} in your account: create it with `peergrid secret set {name}` "
            "(or on the Account page), then submit again.",
        )
        for path, name in wanted
        if name not in have
    ]


def op_secret_values(session: Session, op: Op) -> dict[str, str]:
    """The values of the secrets op uses, for the node about to run it.

    Raises:
        SecretMissing: the job's owner deleted one since submitting.
    """
    # Only names the definition itself wrote count: text a result brought into the spec cannot
    # call up another secret.
    names = secret_names(op.spec) & secret_names(op.job.definition)
    if not names:
        return {}
    values = values_of(session, op.job.owner_id, names)
    missing = sorted(names - set(values))
    if missing:
        listed = ", ".join(missing)
        raise SecretMissing(
            f"{op.key} uses the secret {listed}, which its owner no longer has: create it again with "
            f"`peergrid secret set {missing[0]}` and submit the job again."
        )
    return values


def reveal(spec: dict[str, Any], values: dict[str, str]) -> dict[str, Any]:
    """The op's spec as its node needs it: each %%secrets.NAME%% in env values and the registry
    login replaced by its value; the stored spec is left as it is."""

    def value(match) -> str:
        head, _, name = match.group(1).partition(".")
        return values.get(name, match.group(0)) if head == "secrets" else match.group(0)

    def fill(text: Any) -> Any:
        return LITERAL.sub(value, text) if isinstance(text, str) else text

    revealed = dict(spec)
    if isinstance(spec.get("env"), dict):
        revealed["env"] = {k: fill(v) for k, v in spec["env"].items()}
    docker = (spec.get("authentication") or {}).get("docker")
    if isinstance(docker, dict):
        revealed["authentication"] = {"docker": {k: fill(v) for k, v in docker.items()}}
    return revealed


def masks(values: Iterable[str]) -> list[str]:
    """What to replace with *** in a log: each value, and each line of a multi-line one, longest first."""
    found = set()
    for value in values:
        if value:
            found.add(value)
            found.update(line for line in value.splitlines() if len(line) >= _MIN_MASKED_LINE)
    return sorted(found, key=len, reverse=True)


def redact(text: str, masked: list[str]) -> str:
    """Replace every occurrence of each masked string in text with ***."""
    for value in masked:
        if value in text:
            text = text.replace(value, MASK)
    return text
