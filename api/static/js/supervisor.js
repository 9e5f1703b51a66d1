/* 调度/主管: open tickets by community (GET /reports/open-by-community), ticket KPIs (GET /reports/tickets),
 * open tickets with their SLA clocks (GET /tickets, GET /tickets/{id}), technician load (open tickets per
 * assignee), auto-dispatch (POST /tickets/{id}/dispatch). All ticketing endpoints. */
(function () {
  "use strict";
  const { t, el, clear, api, pick, fill } = HD;
  const EP = {
    byCommunity: ["/reports/open-by-community"], kpis: ["/reports/tickets"], tickets: ["/tickets"],
    ticket: ["/tickets/{ticket_id}"], dispatch: ["/tickets/{ticket_id}/dispatch"],
  };
  const SLA_MAX = 30;   // SLA clocks are fetched per ticket: the 30 most recent open ones
  let detailId = null;

  function worstClock(clocks) {
    const rank = { breached: 4, warning: 3, paused: 2, running: 1, met: 0, stopped: 0 };
    let worst = null;
    for (const c of clocks || []) {
      const st = c.status === "running" && c.warn ? "warning" : c.status;
      if (!worst || (rank[st] || 0) > (rank[worst.st] || 0)) worst = { st, c };
    }
    return worst;
  }

  function slaBadge(w) {
    if (!w) return el("span", { class: "muted" }, "—");
    const cls = w.st === "breached" ? "bad" : w.st === "warning" ? "warn" : "ok";
    const rem = w.c.remaining_minutes;
    return el("span", { class: "badge " + cls }, `${w.c.clock} ${w.st}` + (rem !== undefined && w.st !== "met" ? ` ${Math.round(rem)} min` : ""));
  }

  async function byCommunity() {
    const box = document.getElementById("by-community");
    const path = pick("GET", ...EP.byCommunity);
    if (!path) { HD.notAvailable(box, "open-by-community"); return; }
    try {
      const res = await api(path);
      clear(box).append(res.items.length ? HD.table([{ label: "小区 community", key: "name" }, { label: "换热站", key: "substation" },
        { label: "open", key: "open_tickets" }, { label: "urgent", key: "urgent" }, { label: "low temp", key: "low_temperature" },
        { label: "催办", key: "urges" }], res.items) : el("p", { class: "muted" }, t("no_results")));
    } catch (err) { HD.showError(box, err); }
  }

  async function kpis() {
    const box = document.getElementById("kpis");
    const path = pick("GET", ...EP.kpis);
    if (!path) { HD.notAvailable(box, "reports"); return; }
    try {
      const res = await api(path);
      const kv = el("dl", { class: "kv" });
      const summary = res.summary || res;
      for (const [k, v] of Object.entries(summary)) {
        if (v !== null && typeof v === "object") continue;
        kv.append(el("dt", {}, k), el("dd", {}, v === null ? "—" : typeof v === "number" && !Number.isInteger(v) ? v.toFixed(3) : String(v)));
      }
      clear(box).append(kv);
    } catch (err) { HD.showError(box, err); }
  }

  async function tickets() {
    const list = document.getElementById("tickets");
    const loadBox = document.getElementById("load");
    const path = pick("GET", ...EP.tickets);
    if (!path) { HD.notAvailable(list, "GET /tickets"); HD.notAvailable(loadBox); return; }
    try {
      const res = await api(path + "?" + new URLSearchParams({ open_only: "true", limit: 200 }));
      const items = res.items;
      const load = {};
      for (const tk of items) {
        const k = tk.assignee_id === null ? t("unassigned") : "#" + tk.assignee_id;
        load[k] = (load[k] || 0) + 1;
      }
      clear(loadBox).append(HD.table([{ label: t("technician"), key: "who" }, { label: t("load"), key: "n" }],
        Object.entries(load).sort((a, b) => b[1] - a[1]).map(([who, n]) => ({ who, n }))));
      const tpath = pick("GET", ...EP.ticket);
      const recent = items.slice(0, SLA_MAX);
      const details = tpath ? await Promise.all(recent.map((tk) => api(fill(tpath, { ticket_id: tk.id })).catch(() => null))) : [];
      recent.forEach((tk, i) => { tk._sla = details[i] ? worstClock(details[i].sla) : null; });
      const order = { breached: 0, warning: 1, paused: 2, running: 3 };
      recent.sort((a, b) => (order[a._sla && a._sla.st] ?? 9) - (order[b._sla && b._sla.st] ?? 9));
      clear(list).append(recent.length ? HD.table([{ label: "No.", key: "no" }, { label: t("type"), key: "type" },
        { label: t("status"), key: "status" }, { label: t("priority"), key: "priority" },
        { label: t("sla"), render: (r) => slaBadge(r._sla) }, { label: t("reported"), render: (r) => HD.fmtTime(r.reported_at) }],
        recent, (r) => showTicket(r.id)) : el("p", { class: "muted" }, t("no_results")));
      if (items.length > SLA_MAX) list.append(el("p", { class: "muted" }, `+${items.length - SLA_MAX}`));
      document.getElementById("updated").textContent = "· " + HD.fmtTime(new Date());
    } catch (err) { HD.showError(list, err); }
  }

  async function showTicket(id) {
    detailId = id;
    const box = document.getElementById("detail");
    box.hidden = false;
    const body = clear(document.getElementById("detail-body"));
    try {
      const tk = await api(fill(pick("GET", ...EP.ticket), { ticket_id: id }));
      document.getElementById("detail-title").textContent = `${t("ticket")} ${tk.no} · ${tk.type} · ${tk.status}`;
      document.getElementById("btn-dispatch").disabled = !pick("POST", ...EP.dispatch) || tk.assignee_id !== null;
      body.append(el("p", {}, tk.description || "—"),
        HD.table([{ label: "clock", key: "clock" }, { label: t("status"), key: "status" },
                  { label: "limit min", key: "limit_minutes" }, { label: "remaining min", key: "remaining_minutes" },
                  { label: t("due"), render: (r) => HD.fmtTime(r.due_at) }], tk.sla || []),
        HD.table([{ label: t("time"), render: (r) => HD.fmtTime(r.at) }, { label: "actor", key: "actor" },
                  { label: "action", key: "action" }, { label: "→", key: "to_status" }], tk.events || []));
    } catch (err) { HD.showError(body, err); }
  }

  HD.start(async () => {
    document.getElementById("btn-dispatch").addEventListener("click", async () => {
      if (detailId === null) return;
      try {
        const r = await api(fill(pick("POST", ...EP.dispatch), { ticket_id: detailId }), { method: "POST", body: {} });
        HD.toast("✓ " + t("dispatch") + (r && r.technician_id ? " → #" + r.technician_id : ""));
        showTicket(detailId); tickets();
      } catch (err) { HD.toast(t("error") + ": " + err.message); }
    });
    const q = new URLSearchParams(location.search).get("ticket");
    await Promise.all([byCommunity(), kpis(), tickets()]);
    if (q) showTicket(Number(q));
    setInterval(() => { byCommunity(); tickets(); }, 30000);
  });
})();
