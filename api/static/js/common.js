/* heatdesk pages: shared helpers. Vanilla JS, no build step.
 *
 * The bearer token lives in sessionStorage (per tab, gone when the tab closes). Every call goes
 * through HD.api, which adds the token and the page language, and turns RFC 9457 problem details
 * into Error objects with the server's (localised) message.
 * HD.has(method, pathTemplate) tells whether an endpoint exists (from /openapi.json), so a page can
 * say "endpoint not available yet" instead of inventing data.
 */
(function () {
  "use strict";
  const UI = JSON.parse(document.getElementById("hd-ui").textContent);
  const LANG = document.body.dataset.lang || "zh";
  const TOKEN_KEY = "hd_token";
  let openapi = null;

  function t(key) { return UI[key] || key; }

  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "class") e.className = v;
      else if (k.startsWith("on") && typeof v === "function") e.addEventListener(k.slice(2), v);
      else if (k === "dataset") Object.assign(e.dataset, v);
      else e.setAttribute(k, v === true ? "" : v);
    }
    for (const c of children.flat()) {
      if (c === null || c === undefined || c === false) continue;
      e.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return e;
  }

  function clear(node) { while (node.firstChild) node.removeChild(node.firstChild); return node; }

  class ApiError extends Error {
    constructor(status, problem) {
      super((problem && (problem.detail || problem.title)) || ("HTTP " + status));
      this.status = status; this.problem = problem || {};
    }
  }

  async function api(path, opts) {
    opts = opts || {};
    const headers = Object.assign({ "Accept-Language": LANG === "zh" ? "zh-CN" : "en" }, opts.headers || {});
    const token = sessionStorage.getItem(TOKEN_KEY);
    if (token) headers["Authorization"] = "Bearer " + token;
    let body = opts.body;
    if (body !== undefined && !(body instanceof FormData) && typeof body !== "string") {
      headers["Content-Type"] = "application/json";
      body = JSON.stringify(body);
    }
    const resp = await fetch(path, { method: opts.method || "GET", headers, body });
    if (resp.status === 401 && !opts.noLogin) { showLogin(); }
    if (!resp.ok) {
      let problem = null;
      try { problem = await resp.json(); } catch (e) { /* not JSON */ }
      throw new ApiError(resp.status, problem);
    }
    if (opts.raw) return resp;
    if (resp.status === 204) return null;
    const type = resp.headers.get("content-type") || "";
    return type.includes("json") ? resp.json() : resp.text();
  }

  async function loadOpenapi() {
    if (!openapi) {
      try { openapi = await (await fetch("/openapi.json")).json(); } catch (e) { openapi = { paths: {} }; }
    }
    return openapi;
  }

  /* Does METHOD TEMPLATE exist? Templates compare with parameter names ignored. */
  function has(method, template) {
    if (!openapi) return false;
    const norm = (p) => p.replace(/\{[^}]+\}/g, "{}");
    const want = norm(template);
    for (const [p, ops] of Object.entries(openapi.paths || {})) {
      if (norm(p) === want && ops[method.toLowerCase()]) return true;
    }
    return false;
  }

  /* The first existing path among candidates, or null. */
  function pick(method, ...templates) {
    for (const tpl of templates) if (has(method, tpl)) return tpl;
    return null;
  }

  function fill(template, values) {
    return template.replace(/\{([^}]+)\}/g, (_, k) => encodeURIComponent(values[k] !== undefined ? values[k] : ""));
  }

  function notAvailable(container, what) {
    clear(container).append(el("p", { class: "na" }, t("not_available") + (what ? " (" + what + ")" : "")));
  }

  function showError(container, err) {
    clear(container).append(el("p", { class: "error" }, t("error") + ": " + (err && err.message ? err.message : err)));
  }

  function toast(msg) {
    const box = document.getElementById("toast");
    box.textContent = msg; box.hidden = false;
    clearTimeout(toast._h); toast._h = setTimeout(() => { box.hidden = true; }, 3500);
  }

  function fmtNum(v, digits) {
    if (v === null || v === undefined || Number.isNaN(v)) return "—";
    return Number(v).toFixed(digits === undefined ? 1 : digits);
  }

  function fmtTime(v) {
    if (!v) return "—";
    const d = new Date(v);
    return d.toLocaleString(LANG === "zh" ? "zh-CN" : "en-GB", { timeZone: "Asia/Shanghai", hour12: false });
  }

  function badge(status) {
    return el("span", { class: "badge s-" + status }, t(status));
  }

  function table(columns, rows, onClick) {
    const head = el("tr", {}, columns.map((c) => el("th", {}, c.label)));
    const body = rows.map((r) => el("tr", { class: onClick ? "clickable" : null, onclick: onClick ? () => onClick(r) : null },
      columns.map((c) => el("td", {}, c.render ? c.render(r) : (r[c.key] === null || r[c.key] === undefined ? "—" : r[c.key])))));
    return el("table", {}, el("thead", {}, head), el("tbody", {}, body));
  }

  function showLogin() {
    document.getElementById("main").hidden = true;
    document.getElementById("login").hidden = false;
    document.getElementById("logout").hidden = true;
  }

  async function download(path, filename) {
    const resp = await api(path, { raw: true });
    const blob = await resp.blob();
    const url = URL.createObjectURL(blob);
    const a = el("a", { href: url, download: filename });
    document.body.append(a); a.click(); a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 5000);
  }

  /* Page entry: ensure a session, then run init(user). */
  async function start(init) {
    await loadOpenapi();
    const form = document.getElementById("login-form");
    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const fd = new FormData(form);
      try {
        const res = await api("/auth/login", { method: "POST", noLogin: true,
          body: { username: fd.get("username"), password: fd.get("password") } });
        sessionStorage.setItem(TOKEN_KEY, res.access_token);
        location.reload();
      } catch (err) {
        document.getElementById("login-error").textContent = err.message;
      }
    });
    document.getElementById("logout").addEventListener("click", async () => {
      try { await api("/auth/logout", { method: "POST", noLogin: true }); } catch (e) { /* already gone */ }
      sessionStorage.removeItem(TOKEN_KEY);
      location.reload();
    });
    if (!sessionStorage.getItem(TOKEN_KEY)) { showLogin(); return; }
    let me;
    try { me = await api("/auth/me"); } catch (err) { showLogin(); return; }
    document.getElementById("whoami").textContent = (me.display_name || me.username) + " · " + me.role;
    // navigation shows the pages of the role (the API enforces access either way)
    const pages = me.role === "customer" ? ["customer"] : me.role === "technician" ? ["technician"] : null;
    for (const a of document.querySelectorAll(".topbar nav a[data-page]")) {
      const p = a.dataset.page;
      a.hidden = pages ? !pages.includes(p) : p === "customer";
    }
    document.getElementById("logout").hidden = false;
    document.getElementById("login").hidden = true;
    document.getElementById("main").hidden = false;
    HD.me = me;
    await init(me);
  }

  function chart(node) {
    if (!window.echarts) { node.append(el("p", { class: "na" }, "echarts missing")); return null; }
    const c = window.echarts.init(node);
    window.addEventListener("resize", () => c.resize());
    return c;
  }

  /* Does the signed-in user hold a scope (api/auth.py ROLE_SCOPES)? Used to hide what the API would refuse. */
  function can(scope) { return !!(HD.me && HD.me.scopes && HD.me.scopes.includes(scope)); }

  window.HD = { t, el, clear, api, has, pick, fill, start, notAvailable, showError, toast, fmtNum, fmtTime,
                badge, table, download, chart, can, LANG, ApiError, me: null };
})();
