/* 换热站看板: city overview + one substation's live KPIs (analytics.substation.substation_kpis), alarms,
 * served-household compliance, and the recent series; refreshed every 30 s without reloading. */
(function () {
  "use strict";
  const { t, el, clear, api, pick, fill } = HD;
  const EP = {
    scope: ["/auth/scope"],                               // api (substations in the user's branches)
    kpis: ["/substations/{substation_id}/kpis"],          // analytics (api/routes/substations.py)
    series: ["/substations/{substation_id}/series"],      // analytics
  };
  let selected = null;
  let chart = null;

  function tile(label, value, unit) {
    return el("div", { class: "tile" }, el("div", { class: "v" }, value, el("small", {}, unit ? " " + unit : "")),
              el("div", { class: "l" }, label));
  }

  function pct(rate) { return rate === null || rate === undefined ? "—" : (100 * rate).toFixed(1) + "%"; }

  async function overview() {
    const box = document.getElementById("overview");
    const kpath = pick("GET", ...EP.kpis);
    if (!kpath) { HD.notAvailable(box, "GET /substations/{id}/kpis"); return; }
    try {
      const scope = await api("/auth/scope");
      const all = await Promise.all(scope.substations.map((s) =>
        api(fill(kpath, { substation_id: s.id })).then((k) => ({ s, k }), (err) => ({ s, err }))));
      clear(box);
      for (const { s, k, err } of all) {
        const l = (k && k.latest) || {};
        const alarms = (k && k.alarms) || [];
        const comp = k && k.compliance_last_day;
        box.append(el("div", { class: "subcard" + (alarms.length ? " alarm" : "") + (String(s.id) === String(selected) ? " on" : ""),
                               onclick: () => select(s.id) },
          el("h4", {}, `${s.code} ${s.name}`),
          err ? el("div", { class: "error" }, err.message) : [
            el("div", {}, `${t("supply")} ${HD.fmtNum(l.supply_temp_2)} ℃ · ${t("return")} ${HD.fmtNum(l.return_temp_2)} ℃`),
            el("div", {}, `${t("delta_t")} ${HD.fmtNum(l.delta_t_k)} K · ${t("heat_power")} ${HD.fmtNum(l.heat_power_kw, 0)} kW`),
            el("div", {}, `${t("compliance")} ${pct(comp && comp.rate)}`),
            el("div", { class: alarms.length ? "error" : "muted" }, `${t("alarms")}: ${alarms.length}`)]));
        if (selected === null) selected = s.id;
      }
      if (!all.length) box.append(el("p", { class: "muted" }, t("no_results")));
      document.getElementById("updated").textContent = "· " + HD.fmtTime(new Date());
    } catch (err) { HD.showError(box, err); }
  }

  async function detail() {
    if (selected === null) return;
    const path = pick("GET", ...EP.kpis);
    const tiles = clear(document.getElementById("tiles"));
    if (!path) { HD.notAvailable(tiles, "substation KPIs"); return; }
    try {
      const k = await api(fill(path, { substation_id: selected }));
      const s = k.substation || {};
      for (const c of document.querySelectorAll(".subcard")) c.classList.remove("on");
      const l = k.latest || {};
      document.getElementById("sub-title").textContent = `${s.code || ""} ${s.name || ""} · ${HD.fmtTime(k.at)}`;
      tiles.append(tile(t("supply"), HD.fmtNum(l.supply_temp_2), "℃"), tile(t("return"), HD.fmtNum(l.return_temp_2), "℃"),
        tile(t("delta_t"), HD.fmtNum(l.delta_t_k), "K"), tile(t("flow"), HD.fmtNum(l.flow_2_m3h), "m³/h"),
        tile(t("heat_power"), HD.fmtNum(l.heat_power_kw, 0), "kW"),
        tile(t("outdoor"), HD.fmtNum(l.outdoor_c), "℃"), tile("curve", HD.fmtNum(l.curve_supply_c), "℃"));
      const alarms = clear(document.getElementById("alarms"));
      if (!(k.alarms || []).length) alarms.append(el("p", { class: "muted" }, "—"));
      else alarms.append(HD.table([{ label: "code", key: "code" }, { label: "severity", key: "severity" },
                                    { label: "message", key: "message" }], k.alarms));
      const comp = clear(document.getElementById("compliance"));
      for (const [label, c] of [["last day", k.compliance_last_day], ["season", k.compliance_season]]) {
        if (!c) continue;
        comp.append(el("div", {}, `${label} (${c.from}…${c.to}): ${pct(c.rate)} · ${c.household_days || 0} household-days`));
        const rows = Object.entries(c.by_placement_class || {}).map(([cls, v]) => ({ cls, rate: pct(v.rate), n: v.household_days }));
        if (rows.length) comp.append(HD.table([{ label: "placement", key: "cls" }, { label: t("compliance"), key: "rate" }, { label: "n", key: "n" }], rows));
      }
    } catch (err) { HD.showError(tiles, err); }
    await series();
  }

  async function series() {
    const msg = clear(document.getElementById("series-msg"));
    const path = pick("GET", ...EP.series);
    if (!path) { HD.notAvailable(msg, "substation series"); return; }
    try {
      // a live dashboard: the last 24 h (the API picks the bucket width from the span)
      const since = new Date(Date.now() - 24 * 3600 * 1000).toISOString();
      const d = await api(fill(path, { substation_id: selected }) + "?" + new URLSearchParams({ from: since }));
      const times = d.times || [];
      const metrics = d.series || {};
      const right = new Set(["flow_2", "heat_power", "heat_power_calc_kw"]);
      const names = ["supply_temp_2", "return_temp_2", "delta_t_2", "outdoor_temp", "flow_2", "heat_power", "heat_power_calc_kw"];
      const lines = names.filter((m) => Array.isArray(metrics[m]) && metrics[m].some((v) => v !== null)).map((m) => ({
        name: m, type: "line", connectNulls: false, yAxisIndex: right.has(m) ? 1 : 0,
        showSymbol: metrics[m].filter((v) => v !== null).length < 40,   // isolated points stay visible
        data: times.map((tt, i) => [tt, metrics[m][i]]) }));
      if (!lines.length) msg.append(el("p", { class: "muted" }, t("no_results")));
      // pressures are in the series, not in the KPI summary: show the latest good value
      const lastOf = (a) => { for (let i = (a || []).length - 1; i >= 0; i--) if (a[i] !== null) return a[i]; return null; };
      const tiles = document.getElementById("tiles");
      const ps = lastOf(metrics.supply_pressure_2), pr = lastOf(metrics.return_pressure_2);
      if (ps !== null || pr !== null) tiles.append(tile(t("pressure") + " " + t("supply") + "/" + t("return"),
        `${HD.fmtNum(ps, 2)}/${HD.fmtNum(pr, 2)}`, "MPa"));
      chart = chart || HD.chart(document.getElementById("series"));
      chart.setOption({ animation: false, tooltip: { trigger: "axis" }, legend: { top: 0 }, xAxis: { type: "time" },
        grid: { left: 44, right: 50, top: 30, bottom: 30 },
        yAxis: [{ type: "value", name: "℃", scale: true }, { type: "value", name: "m³/h · kW", scale: true, splitLine: { show: false } }],
        series: lines }, true);
    } catch (err) { HD.showError(msg, err); }
  }

  function select(id) { selected = id; overview(); detail(); }

  HD.start(async () => {
    const q = new URLSearchParams(location.search).get("substation");
    if (q) selected = q;
    await overview(); await detail();
    setInterval(async () => { await overview(); await detail(); }, 30000);
  });
})();
