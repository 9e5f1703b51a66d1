/* 用户自助 (WeChat-style mobile page) for a signed-in customer: my home, report a fault, 报停/复热,
 * complain, bill and reminders, my room-temperature record. Data comes from /self/household and the
 * ticketing/dunning/analytics endpoints; the customer role only ever sees its own household. */
(function () {
  "use strict";
  const { t, el, clear, api, pick, fill } = HD;
  const EP = {
    curve: ["/households/{household_id}/curve"],                                  // analytics
    request: ["/tickets"],                                                        // ticketing (customer: channel app)
    bill: ["/self/bill"],                                                          // api (dunning ledger, own household)
  };
  const TYPES = { fault: "repair", stop: "stop_heat", resume: "resume_heat", complain: "complaint" };
  let tab = "fault", home = null;

  async function loadHome() {
    const box = document.getElementById("home-info");
    try {
      home = await api("/self/household");
      const c = home.contact || {};
      clear(box).append(el("dl", { class: "kv" },
        el("dt", {}, t("code")), el("dd", {}, home.code),
        el("dt", {}, t("address")), el("dd", {}, c.address || `${home.community} ${home.building}${home.unit}`),
        el("dt", {}, t("area")), el("dd", {}, HD.fmtNum(home.area_m2, 2) + " m²"),
        el("dt", {}, t("status")), el("dd", {}, t("heating_" + home.heating_status))));
      clear(document.getElementById("tickets")).append(home.tickets.length ? HD.table([
        { label: "No.", key: "no" }, { label: t("type"), key: "type" }, { label: t("status"), key: "status" },
        { label: t("reported"), render: (r) => HD.fmtTime(r.reported_at) }], home.tickets) : el("p", { class: "muted" }, t("no_results")));
    } catch (err) { HD.showError(box, err); }
  }

  async function loadCurve() {
    const msg = clear(document.getElementById("curve-msg"));
    const path = pick("GET", ...EP.curve);
    if (!path || !home) { HD.notAvailable(msg, t("my_temps")); return; }
    try {
      const data = await api(fill(path, { household_id: home.household_id }));
      HDCurve.render(HD.chart(document.getElementById("curve")), data);
    } catch (err) { HD.showError(msg, err); }
  }

  async function loadBill() {
    const box = document.getElementById("bill");
    const path = pick("GET", ...EP.bill);
    if (!path || !home) { HD.notAvailable(box, t("bill")); return; }
    try {
      const d = await api(path);
      clear(box);
      if (!d.seasons.length) box.append(el("p", { class: "muted" }, t("no_results")));
      for (const s of d.seasons) {
        box.append(el("p", {}, el("b", {}, s.season), ` · ${t("amount")} ¥${s.billed} · paid ¥${s.paid} · `,
          el("span", { class: "badge " + (Number(s.outstanding) > 0 ? "warn" : "ok") }, `¥${s.outstanding}`),
          s.due_date ? ` · ${t("due")} ${s.due_date}` : ""));
      }
      if (d.reminders.length) box.append(HD.table([{ label: t("time"), key: "as_of" }, { label: "step", key: "step" },
        { label: "channel", key: "channel" }, { label: t("amount"), render: (r) => r.amount_asked ? "¥" + r.amount_asked : "—" }], d.reminders));
    } catch (err) { HD.showError(box, err); }
  }

  async function submit(form) {
    const msg = clear(document.getElementById("req-msg"));
    const path = pick("POST", ...EP.request);
    if (!path) { HD.notAvailable(msg, t("submit")); return; }
    const fd = new FormData(form);
    try {
      const res = await api(path, { method: "POST", body: { household_id: home.household_id, type: TYPES[tab],
        channel: "app", description: fd.get("description") || "", low_temperature: fd.get("low_temperature") === "on" } });
      const tk = res.ticket || res;
      msg.append(el("p", {}, "✓ " + (tk.no || tk.id || "")));
      form.reset(); loadHome();
    } catch (err) { HD.showError(msg, err); }
  }

  HD.start(async (me) => {
    if (me.role !== "customer") {
      clear(document.getElementById("home-info")).append(el("p", { class: "error" }, "customer login needed (用户自助需用户账号)"));
      return;
    }
    for (const b of document.querySelectorAll("#tabs button")) {
      b.addEventListener("click", () => {
        tab = b.dataset.tab;
        for (const x of document.querySelectorAll("#tabs button")) x.classList.toggle("on", x === b);
        document.getElementById("lowtemp-row").hidden = !(tab === "fault" || tab === "complain");
      });
    }
    document.getElementById("req-form").addEventListener("submit", (e) => { e.preventDefault(); submit(e.target); });
    await loadHome();
    await Promise.all([loadCurve(), loadBill()]);
  });
})();
