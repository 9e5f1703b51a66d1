/* 设备接入: ingest status per device and recent rejects (GET /devices, GET /rejects), refreshed every 30 s. */
(function () {
  "use strict";
  const { t, el, clear, api } = HD;

  async function refresh() {
    try {
      const [dev, rej] = await Promise.all([api("/devices?limit=200"), api("/rejects?limit=50")]);
      const up = dev.items.filter((d) => d.connected).length;
      clear(document.getElementById("tiles")).append(
        tile(t("connected"), up), tile(t("disconnected"), dev.items.length - up),
        tile(t("rejects") + " 1h", dev.items.reduce((a, d) => a + Number(d.rejects_last_hour), 0)),
        tile("readings 1h", dev.items.reduce((a, d) => a + Number(d.readings_last_hour), 0)));
      clear(document.getElementById("devices")).append(HD.table([
        { label: "device", key: "device_id" }, { label: "protocol", key: "protocol" },
        { label: t("status"), render: (d) => el("span", { class: "badge " + (d.connected ? "ok" : "bad") }, d.connected ? t("connected") : t("disconnected")) },
        { label: "last seen", render: (d) => HD.fmtTime(d.last_seen) },
        { label: "readings 1h", key: "readings_last_hour" }, { label: t("rejects") + " 1h", key: "rejects_last_hour" },
        { label: "error", key: "last_error" }], dev.items));
      clear(document.getElementById("reject-summary")).append(HD.table([
        { label: "source", key: "source" }, { label: t("reason"), key: "reason" }, { label: "n", key: "count" },
        { label: "last", render: (r) => HD.fmtTime(r.last_at) }], rej.summary));
      clear(document.getElementById("rejects")).append(HD.table([
        { label: "time", render: (r) => HD.fmtTime(r.received_at) }, { label: "device", key: "device_id" },
        { label: t("reason"), key: "reason" }, { label: "detail", key: "detail" },
        { label: "payload", render: (r) => el("code", {}, (r.payload_preview || "").slice(0, 80)) }], rej.items));
      document.getElementById("updated").textContent = "· " + HD.fmtTime(new Date());
    } catch (err) { HD.showError(document.getElementById("devices"), err); }
  }
  function tile(label, value) { return el("div", { class: "tile" }, el("div", { class: "v" }, String(value)), el("div", { class: "l" }, label)); }

  HD.start(async () => { await refresh(); setInterval(refresh, 30000); });
})();
