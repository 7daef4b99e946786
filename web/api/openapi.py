"""The OpenAPI 3 description of the REST API and the node API, served at /api/v1/openapi.json."""

from __future__ import annotations

from flask import jsonify

from web.api import bp

ERROR = {"$ref": "#/components/schemas/Error"}
PROBLEMS = {"$ref": "#/components/schemas/Problems"}
USER = [{"apiToken": []}]
NODE = [{"nodeToken": []}]
JOIN = [{"joinToken": []}]
ID = {"type": "integer", "minimum": 1}


def _json(schema: dict, description: str = "OK") -> dict:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*codes: int) -> dict:
    words = {400: "Bad input", 401: "No or wrong token", 402: "Not enough credits", 403: "Not allowed",
             404: "Not found", 409: "Conflict", 413: "Too large", 422: "Invalid definition",
             429: "Over a quota of waiting jobs"}
    return {str(code): _json(PROBLEMS if code == 422 else ERROR, words[code]) for code in codes}


# Any call may find the store unreachable; it is worth trying again after Retry-After seconds.
UNAVAILABLE = {**_json(ERROR, "The store cannot be reached just now"),
               "headers": {"Retry-After": {"description": "Seconds to wait before trying again",
                                           "schema": {"type": "integer"}}}}


def _op(summary: str, ok: dict, *errors: int, security=USER, params=None, body=None, ok_code: int = 200,
        also: dict | None = None) -> dict:
    op = {"summary": summary, "security": security,
          "responses": {str(ok_code): ok, **(also or {}), **_errors(*errors), "503": UNAVAILABLE}}
    if params:
        op["parameters"] = params
    if body:
        op["requestBody"] = {"required": True, "content": {"application/json": {"schema": body}}}
    return op


def _path(name: str, schema=None, where: str = "path") -> dict:
    return {"name": name, "in": where, "required": where == "path", "schema": schema or ID}


OBJ = {"type": "object"}
JOB = {"$ref": "#/components/schemas/Job"}
SECRET = {"type": "object", "required": ["name"], "properties": {
    "name": {"type": "string"}, "created_at": {"type": "string"}, "updated_at": {"type": "string"}}}
SECRETS = {"type": "object", "required": ["secrets"], "properties": {"secrets": {"type": "array", "items": SECRET}}}
SUBMITTED = {"type": "object", "required": ["id", "state", "max_cost"], "properties": {
    "id": {"type": "integer"}, "state": {"type": "string"}, "max_cost": {"type": "integer"}}}
IDEMPOTENCY_KEY = {
    "name": "Idempotency-Key", "in": "header", "required": False,
    "schema": {"type": "string", "minLength": 1, "maxLength": 255},
    "description": "A key of your choosing (a UUID) that makes the submit safe to retry: a repeat with the same "
                   "key and the same request answers 200 with the job the first made, instead of making another; "
                   "the same key with a different definition or market answers 409. Keys are per person and kept.",
}
JOIN_TOKEN = {"type": "object", "required": ["id", "name", "prefix", "created_at", "revoked_at"], "properties": {
    "id": {"type": "integer"}, "name": {"type": "string"}, "prefix": {"type": "string"},
    "created_at": {"type": "string"}, "last_used_at": {"type": "string", "nullable": True},
    "revoked_at": {"type": "string", "nullable": True},
    "nodes": {"type": "integer", "description": "How many nodes it made"}}}
MADE_JOIN_TOKEN = {"allOf": [JOIN_TOKEN, {"type": "object", "required": ["token"], "properties": {
    "token": {"type": "string", "description": "The join token (pgj_…), shown this once"}}}]}
JOINED = {"type": "object", "required": ["id", "name", "token"], "properties": {
    "id": {"type": "integer"}, "name": {"type": "string"},
    "token": {"type": "string", "description": "The new node's token (pgn_…), shown this once"}}}
PROBLEM = {"type": "object", "required": ["path", "message"], "properties": {
    "path": {"type": "string"}, "message": {"type": "string"}}}
VALIDATION = {
    "type": "object", "required": ["valid", "errors", "warnings", "ops", "max_cost", "available"],
    "description": "valid is true when a submit of the definition (to this market, by you, now) would be accepted.",
    "properties": {
        "valid": {"type": "boolean"},
        "errors": {"type": "array", "items": PROBLEM}, "warnings": {"type": "array", "items": PROBLEM},
        "ops": {"type": "array", "items": {"type": "object", "required": ["id", "market", "max_cost"], "properties": {
            "id": {"type": "string"}, "market": {"type": "string"}, "max_cost": {"type": "integer"}}}},
        "max_cost": {"type": "integer"}, "available": {"type": "integer"},
    },
}
NODE_REF = {"type": "object", "required": ["id", "name"], "properties": {
    "id": {"type": "integer"}, "name": {"type": "string"}}}
WAITING = {
    "type": "object", "nullable": True, "required": ["reason", "placed_on", "reserved", "since"],
    "description": "Null unless the op's last attempt waits. Why it waits and where it stands, as the last "
                   "placement pass found it (\"3rd in line for gpu-80gb\", \"your quota of 4 GPUs is in use\").",
    "properties": {
        "reason": {"type": "string"},
        "placed_on": {**NODE_REF, "nullable": True,
                      "description": "The node it was placed on, which is yet to claim it"},
        "reserved": {"type": "object", "nullable": True, "required": ["node", "from"],
                     "description": "GPUs held for it on a node from a time: it is first in line and fits nowhere now",
                     "properties": {"node": NODE_REF, "from": {"type": "string", "nullable": True}}},
        "since": {"type": "string", "description": "When the waiting attempt was made"},
    },
}
OP = {"type": "object", "properties": {"id": {"type": "string"}, "state": {"type": "string"}, "waiting": WAITING}}
PRIORITY = {"name": "priority", "in": "query", "required": False, "schema": {"type": "integer"},
            "description": "Higher runs first; 0 by default, below 0 lets others go first. At most your cap "
                           "(an admin's setting, else the cluster's default); more is refused with 400."}
NULLABLE_COUNT = {"type": "integer", "minimum": 0, "nullable": True}
QUOTA = {"type": "object", "required": ["user", "market", "max_running_gpus", "max_waiting_jobs"], "properties": {
    "user": {"type": "string"}, "user_id": {"type": "integer"},
    "market": {"type": "string", "nullable": True, "description": "null: on every market together"},
    "max_running_gpus": NULLABLE_COUNT, "max_waiting_jobs": NULLABLE_COUNT, "updated_at": {"type": "string"}}}
LIMITS = {"type": "object", "required": ["user", "max_priority", "priority_cap", "quotas"], "properties": {
    "user": OBJ, "max_priority": {"type": "integer", "nullable": True,
                                  "description": "The person's own cap; null: the cluster's default"},
    "priority_cap": {"type": "integer", "description": "The cap that applies to them"},
    "quotas": {"type": "array", "items": QUOTA}, "removed": {"type": "boolean"}}}
USER_REF = {"name": "user_ref", "in": "path", "required": True, "schema": {"type": "string"},
            "description": "The account's email or id"}
REPEATED = "A repeat of an earlier submit's Idempotency-Key: the job (or array) that submit made, now"
ARRAY_SPEC = {
    "name": "array", "in": "query", "required": False, "schema": {"type": "string", "minLength": 1},
    "description": "Submit an array of jobs of the definition, one per index, as Slurm's --array writes them: "
                   "0-999, 0-999%50 (at most 50 running at once), 1,3,5-9 or 0-20:5. Each job sees "
                   "PEERGRID_ARRAY_INDEX in its env and %%array.index%% in its literals; the answer is the array's.",
}
SUBMITTED_ARRAY = {"type": "object", "required": ["id", "size", "state", "max_cost"], "properties": {
    "id": {"type": "integer"}, "size": {"type": "integer"}, "state": {"type": "string"},
    "max_running": {"type": "integer", "nullable": True}, "max_cost": {"type": "integer"}}}
ARRAY = {"type": "object", "required": ["id", "size", "state", "counts", "jobs"], "properties": {
    "id": {"type": "integer"}, "size": {"type": "integer"}, "max_running": {"type": "integer", "nullable": True},
    "state": {"type": "string"},
    "counts": {"type": "object", "additionalProperties": {"type": "integer"},
               "description": "How many of its jobs are in each job state"},
    "done": {"type": "integer"}, "progress": {"type": "string", "description": "One line, like "
                                              "\"37/100 done: 30 succeeded, 7 failed; 8 running; 55 queued\""},
    "max_cost": {"type": "integer"}, "cost": {"type": "integer"},
    "jobs": {"type": "array", "items": {"type": "integer"}, "description": "Its jobs' ids, by index"}}}


def spec() -> dict:
    job_id = _path("job_id")
    secret_name = _path("name", {"type": "string", "pattern": "^[A-Z_][A-Z0-9_]{0,99}$"})
    attempt_id = _path("attempt_id")
    return {
        "openapi": "3.0.3",
        "info": {"title": "peergrid", "version": "1",
                 "description": "Jobs, nodes, markets and credits. Money fields are integer micro-credits."},
        "servers": [{"url": "/api/v1"}],
        "components": {
            "securitySchemes": {
                "apiToken": {"type": "http", "scheme": "bearer", "description": "An API token (pg_…)."},
                "nodeToken": {"type": "http", "scheme": "bearer", "description": "A node token (pgn_…)."},
                "joinToken": {"type": "http", "scheme": "bearer",
                              "description": "A join token (pgj_…): it only makes nodes, at /nodes/join."},
            },
            "schemas": {
                "Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}},
                "Problems": {"type": "object", "required": ["errors"], "properties": {
                    "error": {"type": "string"},
                    "errors": {"type": "array", "items": {"type": "object", "required": ["path", "message"], "properties": {
                        "path": {"type": "string"}, "message": {"type": "string"}}}}}},
                "Job": {"type": "object", "required": ["id", "state", "cost", "max_cost"], "properties": {
                    "id": {"type": "integer"},
                    "state": {"type": "string", "enum": ["queued", "running", "succeeded", "failed", "cancelled"]},
                    "created_at": {"type": "string"}, "started_at": {"type": "string", "nullable": True},
                    "finished_at": {"type": "string", "nullable": True}, "cost": {"type": "integer"},
                    "max_cost": {"type": "integer"}, "reserved": {"type": "integer"},
                    "priority": {"type": "integer", "description": "Higher runs first"},
                    "array_id": {"type": "integer", "nullable": True}, "array_index": {"type": "integer", "nullable": True},
                    "ops": {"type": "array", "items": OP}, "events": {"type": "array", "items": OBJ}}},
                "JobDefinition": {"type": "object", "description": "A Nosana job definition, version 0.1.",
                                  "properties": {"version": {"type": "string"}, "type": {"type": "string"},
                                                 "ops": {"type": "array", "items": OBJ}}},
            },
        },
        "paths": {
            "/health": {"get": _op("Whether the server answers", _json(OBJ), security=[])},
            "/jobs": {
                "get": _op("Your jobs, newest first", _json(OBJ), 400, 401, params=[
                    _path("state", {"type": "string", "enum": ["queued", "running", "succeeded", "failed", "cancelled"]}, "query"),
                    _path("page", {"type": "integer", "minimum": 1}, "query")]),
                "post": _op("Submit a job definition (with ?array=SPEC, an array of jobs of it)",
                            _json({"oneOf": [SUBMITTED, SUBMITTED_ARRAY]}, "Created"), 400, 401, 402, 409, 413, 422, 429,
                            ok_code=201, also={"200": _json({"oneOf": [SUBMITTED, SUBMITTED_ARRAY]}, REPEATED)},
                            params=[_path("market", {"type": "string"}, "query"), ARRAY_SPEC, PRIORITY, IDEMPOTENCY_KEY],
                            body={"$ref": "#/components/schemas/JobDefinition"}),
            },
            "/jobs/validate": {"post": _op(
                "Check and plan a job definition as a submit would, storing and reserving nothing",
                _json(VALIDATION), 400, 401, 413, 422,
                params=[_path("market", {"type": "string"}, "query"), PRIORITY, ARRAY_SPEC],
                body={"$ref": "#/components/schemas/JobDefinition"})},
            "/arrays/{array_id}": {"get": _op("An array of jobs: its counts by state and its jobs' ids", _json(ARRAY),
                                              401, 404, params=[_path("array_id")])},
            "/arrays/{array_id}/cancel": {"post": _op("Cancel every unfinished job of an array", _json(ARRAY),
                                                      401, 404, params=[_path("array_id")])},
            "/jobs/{job_id}": {"get": _op("A job with its ops and events", _json(JOB), 401, 404, params=[job_id])},
            "/jobs/{job_id}/logs": {"get": _op("A job's log lines, in order", _json(OBJ), 401, 404, params=[
                job_id, _path("op", {"type": "string"}, "query"), _path("after", {"type": "integer", "minimum": 0}, "query")])},
            "/jobs/{job_id}/cancel": {"post": _op("Cancel a job", _json(JOB), 401, 404, params=[job_id])},
            "/jobs/{job_id}/extend": {"post": _op("Give a running job more time", _json(JOB), 400, 401, 402, 404, 409,
                                                  params=[job_id], body={"type": "object", "required": ["seconds"], "properties": {
                                                      "seconds": {"type": "integer", "minimum": 1}}})},
            "/jobs/{job_id}/artifacts": {"get": _op("A job's artifacts", _json(OBJ), 401, 404, params=[job_id])},
            "/jobs/{job_id}/artifacts/{op_key}": {"get": _op(
                "Download an op's output (.tar.gz)",
                {"description": "The archive", "content": {"application/gzip": {"schema": {"type": "string", "format": "binary"}}}},
                401, 404, params=[job_id, _path("op_key", {"type": "string"})])},
            "/nodes": {
                "get": _op("Your nodes (all, for an admin)", _json(OBJ), 401),
                "post": _op("Register a node; its token is in the answer, once", _json(OBJ, "Created"), 400, 401, 409,
                            ok_code=201, body={"type": "object", "required": ["name"], "properties": {"name": {"type": "string"}}}),
            },
            "/nodes/join": {"post": _op(
                "A worker joins with a join token: a new node of the token's owner, its node token in the answer, once",
                _json(JOINED, "Created"), 400, 401, 409, security=JOIN, ok_code=201,
                body={"type": "object", "required": ["name"], "properties": {"name": {"type": "string"}}})},
            "/join-tokens": {
                "get": _op("Your join tokens, never the tokens themselves", _json(
                    {"type": "object", "required": ["join_tokens"], "properties": {
                        "join_tokens": {"type": "array", "items": JOIN_TOKEN}}}), 401),
                "post": _op("Make a join token; the token is in the answer, once", _json(MADE_JOIN_TOKEN, "Created"),
                            400, 401, ok_code=201,
                            body={"type": "object", "properties": {"name": {"type": "string", "maxLength": 100}}}),
            },
            "/join-tokens/{token_id}": {"delete": _op(
                "Revoke a join token: it makes no more nodes; the nodes it made keep working", _json(JOIN_TOKEN),
                401, 404, params=[_path("token_id")])},
            "/nodes/{node_id}/drain": {"post": _op("Drain a node, or take it back", _json(OBJ), 401, 404, params=[_path("node_id")],
                                                   body={"type": "object", "properties": {"drain": {"type": "boolean"}}})},
            "/markets": {"get": _op("Every market", _json(OBJ), 401)},
            "/secrets": {"get": _op("Your secrets: names and dates, never values", _json(SECRETS), 401)},
            "/secrets/{name}": {
                "put": _op("Create a secret, or replace its value", _json(SECRET, "Replaced"), 400, 401, params=[secret_name],
                           also={"201": _json(SECRET, "Created")},
                           body={"type": "object", "required": ["value"], "properties": {"value": {"type": "string"}}}),
                "delete": _op("Delete a secret", {"description": "Deleted"}, 400, 401, 404, ok_code=204,
                              params=[secret_name]),
            },
            "/ledger/balance": {"get": _op("Your balances", _json(OBJ), 401)},
            "/ledger/transactions": {"get": _op("Your movements", _json(OBJ), 401,
                                                params=[_path("page", {"type": "integer", "minimum": 1}, "query")])},
            "/payouts": {
                "get": _op("Your payout requests", _json(OBJ), 401),
                "post": _op("Ask for a payout of earnings", _json(OBJ, "Created"), 400, 401, 402, ok_code=201,
                            body={"type": "object", "required": ["amount"], "properties": {"amount": {"type": "integer"}}}),
            },
            "/admin/payouts": {"get": _op("Every payout (admin)", _json(OBJ), 400, 401, 403, params=[
                _path("state", {"type": "string", "enum": ["requested", "approved", "rejected"]}, "query")])},
            "/admin/payouts/{payout_id}/approve": {"post": _op(
                "Approve a payout with the payment's reference (admin)", _json(OBJ), 400, 401, 403, 404, 409,
                params=[_path("payout_id")], body={"type": "object", "required": ["reference"], "properties": {"reference": {"type": "string"}}})},
            "/admin/payouts/{payout_id}/reject": {"post": _op(
                "Reject a payout with a reason (admin)", _json(OBJ), 400, 401, 403, 404, 409,
                params=[_path("payout_id")], body={"type": "object", "required": ["reason"], "properties": {"reason": {"type": "string"}}})},
            "/admin/books": {"get": _op("Whether the books balance (admin)", _json(OBJ), 401, 403)},
            "/admin/grants": {"post": _op("Grant credits (admin)", _json(OBJ, "Created"), 400, 401, 403, 404, ok_code=201,
                                          body={"type": "object", "required": ["email", "amount"], "properties": {
                                              "email": {"type": "string"}, "amount": {"type": "integer"}, "memo": {"type": "string"}}})},
            "/admin/ledger": {"get": _op("Ledger movements (admin)", _json(OBJ), 401, 403, params=[
                _path("kind", {"type": "string"}, "query"), _path("job", {"type": "integer"}, "query"),
                _path("page", {"type": "integer", "minimum": 1}, "query")])},
            "/admin/markets": {"post": _op("Define a market (admin)", _json(OBJ, "Created"), 400, 401, 403, 409, ok_code=201,
                                           body={"type": "object", "required": ["slug"], "properties": {"slug": {"type": "string"}}})},
            "/admin/markets/{slug}": {"patch": _op("Change a market (admin)", _json(OBJ), 400, 401, 403, 404,
                                                   params=[_path("slug", {"type": "string"})], body=OBJ)},
            "/admin/quotas": {"get": _op("Every person's quotas (admin)", _json(
                {"type": "object", "required": ["quotas"], "properties": {"quotas": {"type": "array", "items": QUOTA}}}),
                401, 403)},
            "/admin/users/{user_ref}/quotas": {"get": _op(
                "A person's priority cap and quotas (admin)", _json(LIMITS), 401, 403, 404, params=[USER_REF])},
            "/admin/users/{user_ref}/quota": {
                "put": _op("Set a person's quota on a market, or on every market with market null; a limit null or "
                           "left out does not apply, and with neither the quota is removed (admin)", _json(LIMITS),
                           400, 401, 403, 404, params=[USER_REF], body={"type": "object", "properties": {
                               "market": {"type": "string", "nullable": True},
                               "max_running_gpus": NULLABLE_COUNT, "max_waiting_jobs": NULLABLE_COUNT}}),
                "delete": _op("Remove a person's quota on ?market=SLUG, or their every-market one (admin)",
                              _json(LIMITS), 400, 401, 403, 404,
                              params=[USER_REF, _path("market", {"type": "string"}, "query")]),
            },
            "/admin/users/{user_ref}/max-priority": {"put": _op(
                "Set the highest priority a person may ask for; null: the cluster's default (admin)", _json(LIMITS),
                400, 401, 403, 404, params=[USER_REF], body={"type": "object", "required": ["max_priority"],
                                                             "properties": {"max_priority": NULLABLE_COUNT}})},
            "/admin/jobs/{job_id}/priority": {"post": _op(
                "Change a waiting job's priority, past its owner's cap if need be (admin)", _json(JOB),
                400, 401, 403, 404, 409, params=[job_id], body={"type": "object", "required": ["priority"],
                                                               "properties": {"priority": {"type": "integer"}}})},
            "/node/register": {"post": _op("A worker starts (node token)", _json(OBJ), 400, 401, 403, security=NODE, body=OBJ)},
            "/node/heartbeat": {"post": _op("A worker's heartbeat (node token)", _json(OBJ), 400, 401, 403, security=NODE, body=OBJ)},
            "/node/attempts/{attempt_id}/claim": {"post": _op(
                "Claim an offered attempt (node token); the answer alone carries the op's secret values", _json(OBJ), 400, 401, 403, 404, 409, security=NODE,
                params=[attempt_id], body={"type": "object", "properties": {"gpus": {"type": "array", "items": {"type": "string"}}}})},
            "/node/attempts/{attempt_id}/started": {"post": _op("The container started", _json(OBJ), 401, 403, 404, 409,
                                                                security=NODE, params=[attempt_id])},
            "/node/attempts/{attempt_id}/logs": {"post": _op(
                "A batch of log lines; log_full says the attempt's log reached its limit and later lines are discarded",
                _json({"type": "object", "required": ["stored"], "properties": {
                    "stored": {"type": "integer"}, "log_full": {"type": "boolean"}}}), 400, 401, 403, 404, 409, security=NODE, params=[attempt_id],
                body={"type": "object", "required": ["lines"], "properties": {"lines": {"type": "array", "items": {
                    "type": "object", "required": ["seq", "text"], "properties": {
                        "seq": {"type": "integer"}, "stream": {"type": "string"}, "text": {"type": "string"}}}}}})},
            "/node/attempts/{attempt_id}/finished": {"post": _op(
                "How the attempt ended", _json(OBJ), 400, 401, 403, 404, 409, security=NODE, params=[attempt_id],
                body={"type": "object", "properties": {"exit_code": {"type": "integer", "nullable": True},
                                                       "error": {"type": "string", "nullable": True}}})},
            "/node/attempts/{attempt_id}/release": {"post": _op(
                "Give an attempt back unfinished, the worker stopping: it is offered again at once, not billed, "
                "not counted as a try", _json(OBJ), 400, 401, 403, 404, 409, security=NODE, params=[attempt_id],
                body={"type": "object", "properties": {"reason": {"type": "string"}, "lines": {"type": "array"}}})},
            "/node/attempts/{attempt_id}/health": {"post": _op(
                "A service attempt's health checks and in-place restarts, when they change", _json(OBJ), 400, 401, 403, 404, 409,
                security=NODE, params=[attempt_id],
                body={"type": "object", "properties": {
                    "ports": {"type": "array", "items": {"type": "object", "required": ["port", "state"], "properties": {
                        "port": {"type": "integer"}, "state": {"type": "string", "enum": ["starting", "healthy", "unhealthy"]},
                        "detail": {"type": "string", "nullable": True}}}},
                    "restarts": {"type": "integer"}, "restarting": {"type": "boolean"},
                    "reason": {"type": "string", "nullable": True}}})},
        },
    }


@bp.get("/openapi.json")
def openapi():
    return jsonify(spec())
