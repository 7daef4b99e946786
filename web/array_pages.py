"""The dashboard's page of an array of jobs: its progress, counts and jobs, and a Cancel button."""

from __future__ import annotations

from flask import redirect, render_template, request, url_for

from scheduler.arrays import SHOWN_STATES, array_for, array_jobs, array_status, cancel_array
from web.auth import check_csrf, session_user
from web.dashboard import bp, login_required
from web.db import db

PER_PAGE = 100


def bar_segments(status) -> list[dict]:
    """The progress bar's segments, left to right: each shown state's share, as x and width in percent."""
    segments, x = [], 0.0
    size = max(1, status.array.size)
    for state in SHOWN_STATES:
        n = status.counts[state.value]
        if n:
            width = 100.0 * n / size
            segments.append({"state": state.value, "count": n, "x": round(x, 3), "width": round(width, 3)})
            x += width
    return segments


@bp.get("/arrays/<int:array_id>")
@login_required
def job_array(array_id: int):
    array = array_for(db(), session_user(), array_id)
    status = array_status(db(), array)
    pages = max(1, -(-array.size // PER_PAGE))
    page = min(max(1, request.args.get("page", 1, type=int)), pages)
    return render_template(
        "array.html", array=array, status=status, segments=bar_segments(status), states=SHOWN_STATES,
        jobs=array_jobs(db(), array, page=page, per_page=PER_PAGE), page=page, pages=pages,
    )


@bp.post("/arrays/<int:array_id>/cancel")
@login_required
def job_array_cancel(array_id: int):
    check_csrf()
    cancel_array(db(), array_for(db(), session_user(), array_id))
    return redirect(url_for("dashboard.job_array", array_id=array_id))
