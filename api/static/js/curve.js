/* Render a household's evidence curve (GET /households/{id}/curve, owned by analytics: analytics/evidence.py
 * household_curve) with ECharts: {times:[iso], rooms:[{code, room_type, mean:[℃|null], min, max}],
 * outdoor:{mean_c:[℃|null]}, days:[{day, threshold_c, status}], gaps:[{start, end, kind}], policy:{...}}.
 * Gaps stay gaps (null breaks the line; known outages are shaded), never interpolated. */
(function () {
  "use strict";
  function zip(times, values) { return times.map((t, i) => [t, values[i] === undefined ? null : values[i]]); }

  function render(chart, data) {
    if (!Array.isArray(data.times) || !Array.isArray(data.rooms)) {
      throw new Error("unexpected curve shape: " + Object.keys(data).join(","));
    }
    const lines = data.rooms.map((r) => ({
      name: `${r.code}${r.counts_for_compliance ? "" : " *"}`, type: "line", connectNulls: false,
      showSymbol: r.mean.filter((v) => v !== null).length < 40,    // isolated points stay visible
      data: zip(data.times, r.mean),
    }));
    const thresholds = (data.days || []).map((d) => d.threshold_c).filter((x) => x !== null && x !== undefined);
    const thr = thresholds.length ? thresholds[thresholds.length - 1] : null;
    if (thr !== null && lines.length) {
      lines[0].markLine = { silent: true, symbol: "none", lineStyle: { color: "#b91c1c", type: "dashed" },
                            data: [{ yAxis: thr }], label: { formatter: thr + " ℃" } };
    }
    if (Array.isArray(data.gaps) && data.gaps.length && lines.length) {
      const end = data.range && data.range.end;
      lines[0].markArea = { silent: true, itemStyle: { color: "rgba(156,163,175,0.3)" },
                            data: data.gaps.map((g) => [{ xAxis: g.start, name: g.reason }, { xAxis: g.end || end }]) };
    }
    const outdoor = data.outdoor && data.outdoor.mean_c;
    const hasOutdoor = Array.isArray(outdoor) && outdoor.some((v) => v !== null);
    if (hasOutdoor) {
      lines.push({ name: HD.t("outdoor"), type: "line", showSymbol: false, yAxisIndex: 1,
                   lineStyle: { type: "dotted", color: "#1d4ed8" }, itemStyle: { color: "#1d4ed8" },
                   data: zip(data.times, outdoor) });
    }
    chart.setOption({
      animation: false,
      tooltip: { trigger: "axis", valueFormatter: (v) => (v === null || v === undefined ? "—" : Number(v).toFixed(1) + " ℃") },
      legend: { top: 0 },
      grid: { left: 44, right: 44, top: 30, bottom: 56 },
      xAxis: { type: "time" },
      yAxis: [{ type: "value", name: "℃", scale: true },
              { type: "value", name: HD.t("outdoor"), scale: true, show: hasOutdoor, splitLine: { show: false } }],
      dataZoom: [{ type: "inside" }, { type: "slider", height: 18, bottom: 8 }],
      series: lines,
    }, true);
    return data.rooms.length;
  }
  window.HDCurve = { render };
})();
