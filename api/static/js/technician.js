/* 维修员 mobile page: my orders (GET /tickets?assignee_id=me), 抢单 pool and claim, accept, arrive, photo,
 * 测温 with the customer's and the tester's signatures (attachments), resolve. Ticketing endpoints. */
(function () {
  "use strict";
  const { t, el, clear, api, pick, fill } = HD;
  const EP = {
    list: ["/tickets"], pool: ["/technicians/{technician_id}/pool"], claim: ["/tickets/{ticket_id}/claim"],
    ticket: ["/tickets/{ticket_id}"], accept: ["/tickets/{ticket_id}/accept"], arrive: ["/tickets/{ticket_id}/arrive"],
    resolve: ["/tickets/{ticket_id}/resolve"], attach: ["/tickets/{ticket_id}/attachments"],
    tempTest: ["/tickets/{ticket_id}/temp-tests"], refused: ["/tickets/{ticket_id}/temp-tests/user-refused"],
  };
  let me = null, current = null, sigUser = null, sigStaff = null;

  async function orders() {
    const box = document.getElementById("orders");
    if (me.technician_id === null || me.technician_id === undefined) {
      clear(box).append(el("p", { class: "error" }, "账号未关联维修员 / login not linked to a technician (app_user.technician_id)"));
      return;
    }
    try {
      const res = await api("/tickets?" + new URLSearchParams({ assignee_id: me.technician_id, open_only: "true", limit: 50 }));
      clear(box).append(res.items.length ? HD.table([{ label: "No.", key: "no" }, { label: t("type"), key: "type" },
        { label: t("status"), key: "status" }, { label: t("priority"), key: "priority" }], res.items, (r) => open(r.id))
        : el("p", { class: "muted" }, t("no_results")));
      const pbox = document.getElementById("pool");
      const pp = pick("GET", ...EP.pool);
      if (!pp) { HD.notAvailable(pbox, "pool"); return; }
      const pool = await api(fill(pp, { technician_id: me.technician_id }));
      clear(pbox).append(pool.items.length ? HD.table([{ label: "No.", key: "no" }, { label: t("type"), key: "type" },
        { label: "", render: (r) => el("button", { onclick: () => claim(r.id) }, "抢单") }], pool.items)
        : el("p", { class: "muted" }, t("no_results")));
    } catch (err) { HD.showError(box, err); }
  }

  async function claim(id) {
    try { await api(fill(pick("POST", ...EP.claim), { ticket_id: id }), { method: "POST" }); HD.toast("✓"); await orders(); open(id); }
    catch (err) { HD.toast(t("error") + ": " + err.message); }
  }

  async function open(id) {
    const tk = await api(fill(pick("GET", ...EP.ticket), { ticket_id: id }));
    current = tk;
    document.getElementById("order").hidden = false;
    document.getElementById("order-title").textContent = `${tk.no} · ${tk.type} · ${tk.status}`;
    const info = clear(document.getElementById("order-info"));
    info.append(el("dt", {}, t("description")), el("dd", {}, tk.description || "—"),
                el("dt", {}, t("reported")), el("dd", {}, HD.fmtTime(tk.reported_at)));
    if (tk.household_id) {
      try {
        const hh = await api(`/households/${tk.household_id}`);
        const c = hh.contact || {};
        info.append(el("dt", {}, t("address")), el("dd", {}, c.address || `${hh.community} ${hh.building}${hh.unit} ${hh.floor}F`),
                    el("dt", {}, t("phone")), el("dd", {}, c.phone ? el("a", { href: "tel:" + c.phone }, c.phone) : "—"));
        const sel = clear(document.getElementById("room-select"));
        for (const r of hh.rooms) sel.append(el("option", { value: r.room_id }, `${r.code} (${r.room_type})`));
      } catch (err) { info.append(el("dt", {}, t("household")), el("dd", { class: "error" }, err.message)); }
    }
  }

  async function act(key, body) {
    if (!current) return null;
    try {
      const res = await api(fill(pick("POST", ...EP[key]), { ticket_id: current.id }), { method: "POST", body: body || {} });
      HD.toast("✓ " + key);
      await open(current.id); await orders();
      return res;
    } catch (err) { HD.toast(t("error") + ": " + err.message); return null; }
  }

  async function upload(blob, kind, filename) {
    const fd = new FormData();
    fd.append("kind", kind); fd.append("file", blob, filename);
    return api(fill(pick("POST", ...EP.attach), { ticket_id: current.id }), { method: "POST", body: fd });
  }

  async function saveTempTest(form) {
    const fd = new FormData(form);
    if (sigStaff.isEmpty()) { HD.toast(t("staff_signature") + " ?"); return; }
    try {
      const staff = await upload(await sigStaff.toBlob(), "signature", "staff-signature.png");
      if (fd.get("outcome") === "user_refused") {
        await act("refused", { note: fd.get("note") || "用户拒绝测温", staff_signature_id: staff.id });
        return;
      }
      if (sigUser.isEmpty()) { HD.toast(t("signature") + " ?"); return; }
      const user = await upload(await sigUser.toBlob(), "signature", "customer-signature.png");
      const readings = String(fd.get("readings") || "").split(/[,，\s]+/).filter(Boolean).map(Number);
      await act("tempTest", { measured_at: new Date().toISOString(), readings, points: Math.max(1, readings.length),
        height_m: Number(fd.get("height_m")), stability_ok: fd.get("stability_ok") === "on",
        instrument_id: fd.get("instrument_id"), calibration_cert: fd.get("calibration_cert"),
        calibration_expiry: fd.get("calibration_expiry"), room_id: Number(fd.get("room_id")) || null,
        staff_signature_id: staff.id, user_signature_id: user.id });
    } catch (err) { HD.toast(t("error") + ": " + err.message); }
  }

  HD.start(async (user) => {
    me = user;
    sigUser = HDSignature.attach(document.getElementById("sig-user"));
    sigStaff = HDSignature.attach(document.getElementById("sig-staff"));
    document.getElementById("sig-clear").addEventListener("click", () => { sigUser.clear(); sigStaff.clear(); });
    document.getElementById("outcome").addEventListener("change", (ev) => {
      const refused = ev.target.value === "user_refused";
      document.getElementById("measured-fields").hidden = refused;
      document.getElementById("note-row").hidden = !refused;
    });
    document.getElementById("btn-accept").addEventListener("click", () => act("accept"));
    document.getElementById("btn-arrive").addEventListener("click", () => act("arrive", {}));
    document.getElementById("photo").addEventListener("change", async (ev) => {
      const f = ev.target.files[0];
      if (!f || !current) return;
      try { await upload(f, "photo", f.name); HD.toast("✓ " + t("photo")); } catch (err) { HD.toast(t("error") + ": " + err.message); }
    });
    document.getElementById("temp-form").addEventListener("submit", (ev) => { ev.preventDefault(); saveTempTest(ev.target); });
    document.getElementById("resolve-form").addEventListener("submit", (ev) => {
      ev.preventDefault(); act("resolve", { resolution: new FormData(ev.target).get("resolution") });
    });
    await orders();
  });
})();
