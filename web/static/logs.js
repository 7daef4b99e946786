// Follow a job's logs: poll the API for lines after the last one shown, until the job ends.
(function () {
  const pre = document.getElementById("logs");
  if (!pre) return;
  const status = document.getElementById("log-status");
  let cursor = Number(pre.dataset.cursor || 0);
  let finished = pre.dataset.finished === "true";

  function append(line) {
    const span = document.createElement("span");
    span.className = "line " + line.stream;
    const op = document.createElement("span");
    op.className = "op";
    op.textContent = line.op;
    span.appendChild(op);
    span.appendChild(document.createTextNode(line.text));
    pre.appendChild(span);
    pre.appendChild(document.createTextNode("\n"));
  }

  function badge(cell, state) {
    const span = cell.querySelector(".state");
    if (span && span.textContent !== state) {
      span.textContent = state;
      span.className = "state state-" + state;
    }
  }

  async function refreshStates() {
    const res = await fetch(`/api/v1/jobs/${pre.dataset.job}`, {credentials: "same-origin"});
    if (!res.ok) return;
    const job = await res.json();
    badge(document.getElementById("job-state"), job.state);
    job.ops.forEach(function (op) {
      const cell = document.querySelector(`.op-state[data-op="${CSS.escape(op.id)}"]`);
      if (cell) badge(cell, op.state);
      waitingNote(op);
    });
    const waiting = document.getElementById("waiting");
    if (waiting) waiting.hidden = !waiting.querySelector(".waiting-op:not([hidden])");
  }

  // Keep an op's reason to wait current, and put it away once the op no longer waits.
  function waitingNote(op) {
    const note = document.querySelector(`.waiting-op[data-op="${CSS.escape(op.id)}"]`);
    if (!note) return;
    note.hidden = !op.waiting;
    const reason = note.querySelector(".reason-text");
    if (op.waiting && reason && reason.textContent !== op.waiting.reason) reason.textContent = op.waiting.reason;
  }

  async function poll() {
    try {
      await refreshStates();
      const res = await fetch(`/api/v1/jobs/${pre.dataset.job}/logs?after=${cursor}`, {credentials: "same-origin"});
      if (res.ok) {
        const body = await res.json();
        const atBottom = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
        body.lines.forEach(append);
        cursor = body.next;
        if (atBottom) pre.scrollTop = pre.scrollHeight;
        if (["succeeded", "failed", "cancelled"].includes(body.state)) {
          if (!finished) window.location.reload();  // show final states, exit codes and cost
          return;
        }
      }
    } catch (e) {
      status.textContent = "Lost contact with the server; retrying…";
    }
    setTimeout(poll, 1000);
  }
  if (!finished) setTimeout(poll, 1000);
})();
