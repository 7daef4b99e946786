// The job editor: check the definition as it changes, show problems by path, the cost estimate and
// the balance; swap every op's image when asked.
(function () {
  const editor = document.getElementById("definition");
  const panel = document.getElementById("check");
  const button = document.getElementById("submit-button");
  const imageInput = document.getElementById("image");
  const marketInput = document.getElementById("market");
  const priorityInput = document.getElementById("priority");
  const csrf = document.getElementById("csrf").value;
  let timer = null;
  let lastSent = "";

  function credits(micro) {
    const whole = Math.trunc(micro / 1e6), frac = Math.abs(micro % 1e6);
    return (whole + "." + String(frac).padStart(6, "0")).replace(/\.?0+$/, "");
  }

  function el(tag, text, cls) {
    const node = document.createElement(tag);
    if (text !== undefined) node.textContent = text;
    if (cls) node.className = cls;
    return node;
  }

  function show(result) {
    panel.replaceChildren();
    if (!result.valid) {
      panel.appendChild(el("p", "The definition has problems:", "error"));
      const list = el("ul", undefined, "problems");
      result.errors.forEach(function (p) {
        const item = el("li");
        item.appendChild(el("code", p.path));
        item.appendChild(document.createTextNode(" " + p.message));
        list.appendChild(item);
      });
      panel.appendChild(list);
      button.disabled = true;
      return;
    }
    const table = el("table", undefined, "list estimate");
    const head = el("tr");
    ["Op", "Market", "Time limit", "Tries", "At most (cr)"].forEach(function (h) { head.appendChild(el("th", h)); });
    table.appendChild(el("thead")).appendChild(head);
    const body = table.appendChild(el("tbody"));
    result.ops.forEach(function (op) {
      const row = el("tr");
      [op.id, op.market, op.timeout + " s", String(op.tries), credits(op.max_cost)].forEach(function (v) { row.appendChild(el("td", v)); });
      body.appendChild(row);
    });
    panel.appendChild(el("p", "Valid. It will reserve at most " + credits(result.max_cost) + " credits; you have " +
      credits(result.available) + " available. Unused credits return when it ends.", result.affordable ? "ok-text" : "error"));
    if (!result.affordable) panel.appendChild(el("p", "Not enough credits: short by " + credits(result.max_cost - result.available) + ".", "error"));
    const wrap = el("div", undefined, "table-wrap");
    wrap.appendChild(table);
    panel.appendChild(wrap);
    (result.warnings || []).forEach(function (w) { panel.appendChild(el("p", "Note: " + w.path + " " + w.message, "muted small")); });
    button.disabled = !result.affordable;
  }

  async function check() {
    const payload = JSON.stringify({definition: editor.value, market: marketInput.value,
                                   priority: priorityInput ? priorityInput.value : ""});
    if (payload === lastSent) return;
    lastSent = payload;
    try {
      const res = await fetch("/submit/check", {method: "POST", credentials: "same-origin",
        headers: {"Content-Type": "application/json", "X-CSRF-Token": csrf}, body: payload});
      if (res.ok) show(await res.json());
    } catch (e) { panel.replaceChildren(el("p", "Could not reach the server to check; you can still submit.", "muted")); }
  }

  function soon() { clearTimeout(timer); timer = setTimeout(check, 300); }
  editor.addEventListener("input", soon);
  marketInput.addEventListener("input", soon);
  if (priorityInput) priorityInput.addEventListener("input", soon);
  imageInput.addEventListener("change", function () {
    if (!imageInput.value.trim()) return;
    try {
      const doc = JSON.parse(editor.value);
      (doc.ops || []).forEach(function (op) { if (op.args && op.args.image !== undefined) op.args.image = imageInput.value.trim(); });
      editor.value = JSON.stringify(doc, null, 2);
      soon();
    } catch (e) { /* the check shows what is wrong with the JSON */ }
  });
  check();
})();
