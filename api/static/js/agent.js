/* 客服工作台: search or screen pop → household card, evidence curve, verdicts, dunning, tickets. */
(function () {
  "use strict";
  const { t, el, clear, api, pick, fill } = HD;

  /* Endpoints owned by other modules. Each entry lists the real path(s); the page checks
   * /openapi.json and says "endpoint not available" for what has not landed. */
  const EP = {
    curve: ["/households/{household_id}/curve"],            // analytics (api/routes/curves.py)
    diagnosis: ["/households/{household_id}/diagnosis"],    // analytics
    evidence: ["/households/{household_id}/evidence.pdf"],  // analytics
    screenpop: ["/screenpop"],                              // ticketing (api/routes/screenpop.py)
    ticketCreate: ["/tickets"],                             // ticketing
    dunningPreview: ["/households/{household_id}/dunning/preview"],       // dunning (api/routes/dunning.py)
    dunningBalance: ["/households/{household_id}/dunning/balance"],
    dunningDecisions: ["/households/{household_id}/dunning/decisions"],
  };
  let current = null;
  let chart = null;

  function contactLine(c) {
    if (!c) return el("span", { class: "muted" }, "—");
    return el("span", {}, `${c.name || "—"} · ${c.phone || "—"} · ${c.address || "—"}`,
      c.masked ? el("span", { class: "masked" }, " (" + t("masked") + ")") : null);
  }

  function showResults(items) {
    const box = clear(document.getElementById("results"));
    if (!items.length) { box.append(el("p", { class: "muted" }, t("no_results"))); return; }
    box.append(HD.table([
      { label: t("code"), key: "code" },
      { label: t("address"), render: (r) => `${r.community} ${r.building}${r.unit} ${r.floor}F` },
      { label: t("name"), render: (r) => r.contact ? r.contact.name : "—" },
      { label: t("phone"), render: (r) => r.contact ? r.contact.phone : "—" },
    ], items, (r) => openHousehold(r.household_id)));
    if (items.length === 1) openHousehold(items[0].household_id);
  }

  async function search(q) {
    const box = clear(document.getElementById("results"));
    box.append(el("p", { class: "muted" }, t("loading")));
    try {
      const res = await api("/households?" + new URLSearchParams({ q, limit: 50 }));
      showResults(res.items);
    } catch (err) { HD.showError(box, err); }
  }

  async function screenPop(number) {
    const path = pick("GET", ...EP.screenpop);
    const box = clear(document.getElementById("results"));
    if (!path) { HD.notAvailable(box, "screen pop"); return; }
    try {
      const res = await api(path + "?" + new URLSearchParams({ phone: number }));
      showResults(res.households.map((c) => Object.assign({}, c.household, { household_id: c.household.id, contact: c.contact })));
    } catch (err) { HD.showError(box, err); }
  }

  async function openHousehold(id) {
    const card = clear(document.getElementById("hh-card"));
    card.append(el("p", { class: "muted" }, t("loading")));
    let hh;
    try { hh = await api(`/households/${id}`); } catch (err) { HD.showError(card, err); return; }
    current = hh;
    clear(card).append(
      el("h2", {}, `${t("household")} ${hh.code} `,
         el("span", { class: "badge " + (hh.heating_status === "active" ? "ok" : "warn") }, t("heating_" + hh.heating_status))),
      el("dl", { class: "kv" },
        el("dt", {}, t("name") + "/" + t("phone")), el("dd", {}, contactLine(hh.contact)),
        el("dt", {}, t("address")), el("dd", {}, `${hh.branch} › ${hh.substation} (${hh.substation_code}) › ${hh.community} › ${hh.building} › ${hh.unit} › ${hh.floor}F`),
        el("dt", {}, t("area")), el("dd", {}, `${HD.fmtNum(hh.area_m2, 2)} m² · ${hh.billing_method} · ${hh.placement_class}`),
        el("dt", {}, t("tickets")), el("dd", {}, String(hh.open_tickets)),
      ));
    document.getElementById("btn-ticket").disabled = !pick("POST", ...EP.ticketCreate) || !HD.can("tickets:write");
    document.getElementById("btn-pdf").disabled = !pick("GET", ...EP.evidence);
    renderRooms(hh);
    renderVerdicts(hh);
    renderTickets(hh);
    loadCurve(hh);
    loadDunning(hh);
  }

  function renderRooms(hh) {
    const rows = [];
    for (const r of hh.rooms) for (const s of (r.sensors.length ? r.sensors : [null])) {
      rows.push({ room: `${r.code} (${r.room_type})`, metric: s ? s.metric : "—", value: s ? HD.fmtNum(s.last_value) : "—",
                  at: s ? HD.fmtTime(s.last_time) : "—",
                  dev: s ? (s.device_connected ? t("connected") : t("disconnected")) : "—" });
    }
    clear(document.getElementById("rooms")).append(HD.table([
      { label: t("room"), key: "room" }, { label: t("sensors"), key: "metric" }, { label: t("last") + " ℃", key: "value" },
      { label: t("time"), key: "at" }, { label: t("status"), key: "dev" }], rows));
  }

  async function renderVerdicts(hh) {
    const box = clear(document.getElementById("verdicts"));
    if (!hh.daily_verdicts.length) box.append(el("p", { class: "muted" }, t("no_results")));
    else box.append(HD.table([
      { label: "日期 day", key: "day" }, { label: t("status"), render: (r) => HD.badge(r.status) },
      { label: "℃", render: (r) => HD.fmtNum(r.worst_stat_c) },
      { label: "coverage", render: (r) => HD.fmtNum(100 * (r.min_coverage || 0), 0) + "%" }], hh.daily_verdicts));
    const path = pick("GET", ...EP.diagnosis);
    const diag = el("div", { style: "margin-top:6px" });
    box.append(diag);
    if (!path) { HD.notAvailable(diag, t("diagnosis")); return; }
    try {
      const d = await api(fill(path, { household_id: hh.household_id }));
      diag.append(el("p", {}, el("b", {}, t("diagnosis") + ": "), el("span", { class: "badge warn" }, d.blame), " ",
                     HD.LANG === "zh" ? d.text_zh : d.text_en),
                  el("p", { class: "muted" }, (d.reasons || []).join(" · ") + (d.rules && d.rules.length ? " — " + d.rules.join(", ") : "")));
    } catch (err) { HD.showError(diag, err); }
  }

  function renderTickets(hh) {
    const box = clear(document.getElementById("tickets"));
    if (!hh.tickets.length) { box.append(el("p", { class: "muted" }, t("no_results"))); return; }
    box.append(HD.table([
      { label: "No.", key: "no" }, { label: t("type"), key: "type" }, { label: t("status"), key: "status" },
      { label: t("priority"), key: "priority" }, { label: t("reported"), render: (r) => HD.fmtTime(r.reported_at) }], hh.tickets,
      (r) => { location.href = `/ui/supervisor?ticket=${r.id}`; }));
  }

  async function loadCurve(hh) {
    const msg = clear(document.getElementById("curve-msg"));
    const path = pick("GET", ...EP.curve);
    if (!path) { if (chart) chart.clear(); HD.notAvailable(msg, "GET /households/{id}/curve"); return; }
    try {
      const data = await api(fill(path, { household_id: hh.household_id }));
      chart = chart || HD.chart(document.getElementById("curve"));
      const n = HDCurve.render(chart, data);
      if (!n) msg.append(el("p", { class: "muted" }, t("no_results")));
    } catch (err) { HD.showError(msg, err); }
  }

  /* 欠费与催缴: what the compliance gate would do today and why, the season's balance, reminders sent. */
  async function loadDunning(hh) {
    const box = clear(document.getElementById("arrears"));
    const pre = pick("GET", ...EP.dunningPreview);
    if (!pre) { HD.notAvailable(box, t("arrears")); return; }
    if (!HD.can("dunning:read")) { box.append(el("p", { class: "muted" }, t("no_access"))); return; }
    const id = { household_id: hh.household_id };
    try {
      const d = await api(fill(pre, id));
      const cls = d.action === "send" ? "bad" : d.action === "skip" ? "ok" : "warn";
      box.append(el("p", {}, el("span", { class: "badge " + cls }, d.action), ` ${d.season} · ${d.step || "—"} · ${d.channel || "—"}`),
        el("p", { class: "muted" }, `${t("reason")}: ${(d.reasons || []).join(", ") || "—"}`),
        el("dl", { class: "kv" },
          el("dt", {}, t("amount")), el("dd", {}, `¥${d.amount_asked ?? "—"}`),
          el("dt", {}, d.late_fee_label || "违约金"), el("dd", {}, `¥${d.late_fee ?? "0"}`),
          el("dt", {}, "refund adjust"), el("dd", {}, `¥${d.refund_adjust ?? "0"}`)));
      const bal = pick("GET", ...EP.dunningBalance);
      if (bal && d.season) {
        const b = await api(fill(bal, id) + "?" + new URLSearchParams({ season: d.season }));
        box.append(el("p", {}, `${t("arrears")}: ¥${b.outstanding} / ${b.billed} · ${t("due")} ${b.due_date || "—"} · +${b.days_overdue} ${t("days")}`));
      }
    } catch (err) {
      if (err.status === 404) box.append(el("p", { class: "muted" }, err.message)); else HD.showError(box, err);
    }
    const dec = pick("GET", ...EP.dunningDecisions);
    if (!dec) return;
    try {
      const r = await api(fill(dec, id) + "?limit=5");
      if (r.decisions.length) box.append(HD.table([{ label: t("time"), key: "as_of" }, { label: "step", key: "step" },
        { label: "action", key: "action" }, { label: "channel", key: "channel" },
        { label: "delivery", render: (x) => x.delivery_status || "—" }], r.decisions));
    } catch (err) { box.append(el("p", { class: "error" }, err.message)); }
  }

  async function createTicket(form) {
    const path = pick("POST", ...EP.ticketCreate);
    if (!path || !current) return;
    const fd = new FormData(form);
    try {
      const res = await api(path, { method: "POST", body: {
        household_id: current.household_id, type: fd.get("type"), channel: "phone",
        description: fd.get("description") || "", low_temperature: fd.get("low_temperature") === "on" } });
      const tk = res.ticket || res;
      HD.toast(`${tk.no || tk.id} ✓` + (res.duplicate_of ? ` (催单 → #${res.duplicate_of})` : ""));
      form.hidden = true;
      openHousehold(current.household_id);
    } catch (err) { HD.toast(t("error") + ": " + err.message); }
  }

  HD.start(async () => {
    document.getElementById("search-form").addEventListener("submit", (e) => {
      e.preventDefault(); const q = document.getElementById("q").value.trim(); if (q) search(q);
    });
    document.getElementById("pop-form").addEventListener("submit", (e) => {
      e.preventDefault(); const n = document.getElementById("caller").value.trim(); if (n) screenPop(n);
    });
    document.getElementById("btn-ticket").addEventListener("click", () => {
      const f = document.getElementById("ticket-form"); f.hidden = !f.hidden;
    });
    document.getElementById("ticket-form").addEventListener("submit", (e) => { e.preventDefault(); createTicket(e.target); });
    document.getElementById("btn-pdf").addEventListener("click", async () => {
      const path = pick("GET", ...EP.evidence);
      if (path && current) {
        try { await HD.download(fill(path, { household_id: current.household_id }), `evidence-${current.code}.pdf`); }
        catch (err) { HD.toast(t("error") + ": " + err.message); }
      }
    });
    const params = new URLSearchParams(location.search);
    if (params.get("caller")) { document.getElementById("caller").value = params.get("caller"); screenPop(params.get("caller")); }
    else if (params.get("household")) openHousehold(params.get("household"));
    for (const key of Object.keys(EP)) {
      if (!pick(key === "ticketCreate" ? "POST" : "GET", ...EP[key])) console.info("endpoint not available:", key, EP[key]);
    }
  });
})();
