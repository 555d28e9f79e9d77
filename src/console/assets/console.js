// Lanyard operator console. Plain JavaScript, no dependencies, no build step.
//
// Every few seconds the page reads, through the console (which holds the operator credential),
// GET /v1/authorities, /v1/activity, /v1/certificates and /v1/audit, and re-renders. Any
// failure replaces the data with a banner that says what failed: an operator must never
// mistake an old picture for the current one. Text from the CA is only ever set with
// textContent, never parsed as HTML.
"use strict";

(function () {
  const STATES = ["prepared", "active", "retiring", "retired"];
  const SVG_NS = "http://www.w3.org/2000/svg";
  const MAX_GENERATIONS = 6;
  const AUDIT_ROWS = 15;
  const CELL_ROWS = 12;
  const RECENT_ROWS = 8;

  // The timeline's windows besides the whole lifetimes: [before now, after now].
  const HOUR = 3600000, DAY = 24 * HOUR;
  const ZOOMS = {
    lifetimes: null,
    "30d": { before: 3 * DAY, after: 27 * DAY },
    "48h": { before: 6 * HOUR, after: 42 * HOUR },
  };
  let zoom = "lifetimes";

  let refreshMs = 5000;
  let timer = null;
  let lastGood = null;
  let failingSince = null;
  let lastData = null;

  const $ = (id) => document.getElementById(id);

  // ---- DOM helpers -------------------------------------------------------------------------

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    setAttrs(node, attrs);
    for (const c of children) {
      if (c === null || c === undefined) continue;
      node.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return node;
  }

  function svg(tag, attrs, text) {
    const node = document.createElementNS(SVG_NS, tag);
    setAttrs(node, attrs);
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function setAttrs(node, attrs) {
    if (!attrs) return;
    for (const [k, v] of Object.entries(attrs)) {
      if (v === null || v === undefined || v === false) continue;
      node.setAttribute(k, String(v));
    }
  }

  function clear(node) {
    while (node.firstChild) node.removeChild(node.firstChild);
  }

  function emptyRow(tbody, columns, text) {
    tbody.append(el("tr", null, el("td", { class: "empty", colspan: columns }, text)));
  }

  // ---- Time --------------------------------------------------------------------------------

  function ms(rfc3339) {
    if (!rfc3339) return NaN;
    return Date.parse(rfc3339);
  }

  const pad = (n) => String(n).padStart(2, "0");
  const MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];

  function utc(t, withSeconds) {
    if (!Number.isFinite(t)) return "–";
    const d = new Date(t);
    const day = `${d.getUTCFullYear()}-${pad(d.getUTCMonth() + 1)}-${pad(d.getUTCDate())}`;
    const time = `${pad(d.getUTCHours())}:${pad(d.getUTCMinutes())}`;
    return withSeconds ? `${day} ${time}:${pad(d.getUTCSeconds())}` : `${day} ${time}`;
  }

  function clock(t) {
    if (!Number.isFinite(t)) return "–";
    const d = new Date(t);
    return `${pad(d.getUTCHours())}:${pad(d.getUTCMinutes())}:${pad(d.getUTCSeconds())}`;
  }

  function dayOnly(t) {
    if (!Number.isFinite(t)) return "–";
    const d = new Date(t);
    return `${d.getUTCFullYear()}-${pad(d.getUTCMonth() + 1)}-${pad(d.getUTCDate())}`;
  }

  // A duration as people say it: the two largest units ("3d 4h", "4m 10s", "12s").
  function span(delta) {
    let s = Math.round(Math.abs(delta) / 1000);
    const units = [["y", 365 * 86400], ["d", 86400], ["h", 3600], ["m", 60], ["s", 1]];
    const parts = [];
    for (const [u, n] of units) {
      if (s >= n || (u === "s" && parts.length === 0)) {
        parts.push(`${Math.floor(s / n)}${u}`);
        s %= n;
      }
      if (parts.length === 2) break;
    }
    return parts.join(" ");
  }

  function rel(t, now) {
    if (!Number.isFinite(t)) return "";
    const d = t - now;
    if (Math.abs(d) < 1000) return "now";
    return d > 0 ? `in ${span(d)}` : `${span(d)} ago`;
  }

  // ---- Fetching ----------------------------------------------------------------------------

  class Failure extends Error {
    constructor(kind, title, detail) {
      super(title);
      this.kind = kind;
      this.title = title;
      this.detail = detail;
    }
  }

  async function getJson(path) {
    let resp;
    try {
      resp = await fetch(path, {
        cache: "no-store",
        credentials: "same-origin",
        headers: { Accept: "application/json" },
      });
    } catch (e) {
      throw new Failure(
        "offline",
        "The console does not answer",
        "Is `lanyard console` still running? The page keeps trying."
      );
    }
    let body = null;
    try {
      body = await resp.json();
    } catch (e) {
      body = null;
    }
    if (resp.ok && body) return body;
    const detail = body && body.detail ? body.detail : `${resp.status} ${resp.statusText}`;
    if (resp.status === 502) throw new Failure("unreachable", "The CA is unreachable", detail);
    if (resp.status === 503) throw new Failure("unreachable", "The CA is not ready", detail);
    if (resp.status === 401 || resp.status === 403) {
      throw new Failure("refused", "The CA refused the console's credential", detail);
    }
    throw new Failure("refused", `The CA answered ${resp.status}`, detail);
  }

  async function load() {
    // The console's own facts first: the header names the CA even while it does not answer.
    const info = await getJson("/console.json");
    if (info.refresh_seconds > 0) refreshMs = info.refresh_seconds * 1000;
    renderHeader(info, Date.now());
    const [authorities, activity, certificates, auditHead] = await Promise.all([
      getJson("/v1/authorities"),
      getJson("/v1/activity"),
      getJson(`/v1/certificates?limit=${RECENT_ROWS}`),
      getJson("/v1/audit?limit=1"),
    ]);
    const after = Math.max(0, (auditHead.last || 0) - AUDIT_ROWS);
    const audit = await getJson(`/v1/audit?after=${after}&limit=${AUDIT_ROWS}`);
    return { info, authorities, activity, certificates, audit };
  }

  async function refresh() {
    clearTimeout(timer);
    try {
      const data = await load();
      lastGood = Date.now();
      failingSince = null;
      lastData = data;
      render(data);
      showLive();
    } catch (e) {
      const f = e instanceof Failure ? e : new Failure("refused", "The page failed", String(e));
      if (!(e instanceof Failure)) console.error(e);
      showFailure(f);
    }
    tick();
    if (!document.hidden) timer = setTimeout(refresh, refreshMs);
  }

  // ---- Status ------------------------------------------------------------------------------

  function showLive() {
    const pill = $("ca-status");
    pill.dataset.state = "live";
    pill.textContent = "live";
    $("problem").hidden = true;
    $("main").hidden = false;
  }

  function showFailure(f) {
    if (failingSince === null) failingSince = Date.now();
    lastData = null;
    const pill = $("ca-status");
    pill.dataset.state = f.kind;
    pill.textContent = f.kind === "offline" ? "console down" : f.kind === "refused" ? "refused" : "unreachable";
    $("problem-title").textContent = f.title;
    $("problem-detail").textContent = f.detail;
    $("problem-since").textContent =
      `Failing since ${clock(failingSince)} UTC` +
      (lastGood ? `; the last good data (${clock(lastGood)} UTC) is not shown` : "") +
      `. The page tries again every ${Math.round(refreshMs / 1000)} s.`;
    $("problem").hidden = false;
    // No stale picture: the data goes until the CA answers again.
    $("main").hidden = true;
  }

  function tick() {
    const now = Date.now();
    $("refreshed-at").textContent = lastGood ? `${clock(lastGood)} UTC` : "never";
    $("refreshed-ago").textContent = lastGood ? `(${rel(lastGood, now)})` : "";
  }

  // ---- Rendering ---------------------------------------------------------------------------

  function render(d) {
    const now = Date.now();
    renderHeader(d.info, now);
    renderSummary(d.authorities, d.activity, now);
    renderTimeline(d.authorities, now);
    renderGenerationTable(d.authorities, now);
    renderRate(d.activity);
    renderCells(d.activity, now);
    renderExpiring(d.activity, now);
    renderRecent(d.certificates, now);
    renderAudit(d.audit);
  }

  function shortActor(actor) {
    const m = /^spiffe:\/\/[^/]+\/(?:lanyard\/)?([^/]+)\/(.+)$/.exec(actor || "");
    return m ? `${m[1]} ${m[2]}` : actor || "";
  }

  function renderHeader(info, now) {
    $("ca-url").textContent = `CA ${info.answered_by}` +
      (info.servers.length > 1 ? ` (of ${info.servers.length} replicas)` : "");
    const c = info.credential || {};
    let who = c.spiffe_id ? `as ${shortActor(c.spiffe_id)}` : "anonymous";
    if (c.not_after) who += `, credential expires ${rel(ms(c.not_after), now)}`;
    $("operator").textContent = who;
    $("version").textContent = `lanyard ${info.version}`;
  }

  function stepText(step, now) {
    const due = ms(step.due_at);
    const when = due <= now ? "due now" : rel(due, now);
    return `${step.action} generation ${step.authority_id} · ${when}`;
  }

  function renderSummary(a, act, now) {
    $("bundle-sequence").textContent = String(a.trust_bundle_sequence);
    const published = a.authorities.filter((g) => g.state !== "retired").length;
    $("bundle-roots").textContent = `${published} root${published === 1 ? "" : "s"} published`;
    const active = a.authorities.find((g) => g.state === "active");
    $("active-generation").textContent = active ? active.id : "none";
    $("active-note").textContent = active
      ? `root expires ${rel(ms(active.root_not_after), now)}, intermediate ${rel(ms(active.intermediate_not_after), now)}`
      : "no generation signs";
    const step = a.next_automatic_step;
    $("next-step").textContent = step ? stepText(step, now) : "none scheduled";
    $("next-step").dataset.action = step ? step.action : "";
    $("next-step-reason").textContent = step
      ? `${step.reason} · ${utc(ms(step.due_at))} UTC`
      : "rotation.automatic is off and no renewal is ahead";
    $("issued-hour").textContent = String(act.issued_last_hour);
    $("refused-hour").textContent = `${act.refused_last_hour} refused or failed`;
  }

  // Ticks for a time axis from t0 to t1: months, days or hours, at most about ten.
  function ticks(t0, t1) {
    const spanMs = t1 - t0;
    const out = [];
    const day = 86400000;
    if (spanMs > 60 * day) {
      const months = spanMs / (30 * day);
      const every = [1, 2, 3, 6, 12].find((k) => months / k <= 10) || 12;
      const d = new Date(t0);
      let y = d.getUTCFullYear();
      let m = d.getUTCMonth() + 1;
      for (;;) {
        if (m > 11) { y += Math.floor(m / 12); m %= 12; }
        const t = Date.UTC(y, m, 1);
        if (t > t1) break;
        if (m % every === 0) out.push([t, `${MONTHS[m]} ${y}`]);
        m += 1;
      }
    } else if (spanMs > 3 * day) {
      const days = spanMs / day;
      const every = [1, 2, 7, 14].find((k) => days / k <= 10) || 14;
      let t = Math.ceil(t0 / day) * day;
      for (; t <= t1; t += day * every) {
        const d = new Date(t);
        out.push([t, `${MONTHS[d.getUTCMonth()]} ${pad(d.getUTCDate())}`]);
      }
    } else {
      const hours = spanMs / 3600000;
      const every = [1, 2, 3, 6, 12].find((k) => hours / k <= 10) || 12;
      const step = 3600000 * every;
      for (let t = Math.ceil(t0 / step) * step; t <= t1; t += step) {
        const d = new Date(t);
        out.push([t, t % day === 0 ? `${MONTHS[d.getUTCMonth()]} ${pad(d.getUTCDate())}` : clock(t).slice(0, 5)]);
      }
    }
    return out;
  }

  function renderTimeline(a, now) {
    const root = $("timeline");
    clear(root);
    const all = a.authorities;
    const gens = all.slice(-MAX_GENERATIONS);
    const hidden = all.length - gens.length;
    $("generations-note").textContent =
      `${all.length} generation${all.length === 1 ? "" : "s"}` +
      (hidden > 0 ? `, the ${hidden} oldest (retired) not drawn` : "");
    const W = Math.max(root.clientWidth || root.parentNode.clientWidth || 1100, 600);
    const L = 118, R = 18, TOP = 30, ROW = 34, BAR = 22;
    const H = TOP + gens.length * ROW + 22;
    setAttrs(root, { viewBox: `0 0 ${W} ${H}`, height: H });
    if (gens.length === 0) {
      root.append(svg("text", { x: W / 2, y: H / 2, "text-anchor": "middle", class: "empty" }, "no generations"));
      return;
    }
    const step = a.next_automatic_step;
    let t0, t1;
    const win = ZOOMS[zoom];
    if (win) {
      // A window around now: what happens in the coming days or hours.
      t0 = now - win.before;
      t1 = now + win.after;
    } else {
      t0 = Math.min(now, ...gens.map((g) => ms(g.root_not_before || g.created_at)));
      t1 = Math.max(now, ...gens.map((g) => ms(g.root_not_after)));
      const margin = (t1 - t0) * 0.015;
      t0 -= margin;
      t1 += margin;
    }
    // Times outside the window are drawn at its edge.
    const x = (t) => L + ((Math.min(Math.max(t, t0), t1) - t0) / (t1 - t0)) * (W - L - R);

    for (const [t, label] of ticks(t0, t1)) {
      root.append(svg("line", { x1: x(t), x2: x(t), y1: TOP - 6, y2: H - 4, class: "grid" }));
      root.append(svg("text", { x: x(t), y: TOP - 12, "text-anchor": "middle" }, label));
    }
    root.append(svg("line", { x1: L, x2: W - R, y1: TOP - 6, y2: TOP - 6, class: "axis-line" }));

    gens.forEach((g, i) => {
      const y = TOP + i * ROW + (ROW - BAR) / 2;
      const state = STATES.includes(g.state) ? g.state : "retired";
      const row = svg("g", { class: `gen ${state}`, "data-generation": g.id, "data-state": state });
      row.append(svg("text", { x: 4, y: y + 10, class: "row-label" }, `Gen ${g.id}`));
      row.append(svg("text", { x: 4, y: y + 23, class: "row-state" }, state));
      const rs = ms(g.root_not_before || g.created_at), re = ms(g.root_not_after);
      if (re < t0 || rs > t1) {
        row.append(svg("text", { x: L + 6, y: y + 15, class: "row-state" },
          re < t0 ? `expired ${rel(re, now)}` : `starts ${rel(rs, now)}`));
        root.append(row);
        return;
      }
      const rootBar = svg("rect", {
        x: x(rs), y, width: Math.max(2, x(re) - x(rs)), height: BAR, rx: 4, class: `root ${state}`,
      });
      rootBar.append(svg("title", null,
        `Generation ${g.id} (${state})\nroot ${utc(rs)} → ${utc(re)} UTC\n` +
        `intermediate ${utc(ms(g.intermediate_not_before))} → ${utc(ms(g.intermediate_not_after))} UTC`));
      row.append(rootBar);
      const is = ms(g.intermediate_not_before), ie = ms(g.intermediate_not_after);
      if (Number.isFinite(is) && Number.isFinite(ie)) {
        row.append(svg("rect", {
          x: x(is), y: y + 7, width: Math.max(2, x(ie) - x(is)), height: 8, rx: 2, class: `inter ${state}`,
        }));
      }
      root.append(row);
    });

    // The bottom lane: "now", and the next automatic step's label beside it, never on a bar.
    const charW = 7.2;
    const nx = x(now);
    root.append(svg("line", { x1: nx, x2: nx, y1: TOP - 4, y2: H - 16, class: "now" }));
    const nowText = `now ${clock(now).slice(0, 5)} UTC`;
    const nowW = nowText.length * charW;
    const nowStart = Math.min(Math.max(nx - nowW / 2, L - 40), W - R - nowW);
    root.append(svg("text", { x: nowStart, y: H - 3, class: "now-label" }, nowText));

    if (step) {
      const i = gens.findIndex((g) => g.id === step.authority_id);
      if (i >= 0) {
        const due = Math.max(ms(step.due_at), now);
        const cx = x(due), cy = TOP + i * ROW + ROW / 2;
        const r = 7;
        root.append(svg("line", { x1: cx, x2: cx, y1: cy + r, y2: H - 15, class: "step-link" }));
        root.append(svg("path", {
          d: `M ${cx} ${cy - r} L ${cx + r} ${cy} L ${cx} ${cy + r} L ${cx - r} ${cy} Z`,
          class: "step-mark", id: "timeline-next-step",
        }));
        const when = ms(step.due_at) <= now ? "due now" : rel(ms(step.due_at), now);
        const label = `next: ${step.action} generation ${step.authority_id} · ${when}`;
        const w = label.length * charW;
        let lx = cx + 4;
        if (lx < nowStart + nowW + 18 && lx + w > nowStart - 18) lx = nowStart + nowW + 18;
        lx = Math.min(lx, W - R - w);
        root.append(svg("text", { x: lx, y: H - 3, class: "step-label" }, label));
      }
    }

    const legend = $("timeline-legend");
    clear(legend);
    for (const s of STATES) legend.append(el("span", null, el("span", { class: `key ${s}` }), ` ${s}`));
    legend.append(el("span", null, el("span", { class: "key root" }), " root validity (the thin bar inside: the current intermediate)"));
    legend.append(el("span", null, el("span", { class: "key now" }), " now"));
    legend.append(el("span", null, el("span", { class: "key step" }), " next automatic step"));
  }

  function validity(from, to, now) {
    const cell = el("td", { class: "nowrap" }, `${dayOnly(ms(from))} → ${dayOnly(ms(to))}`);
    cell.append(el("div", { class: "rel" }, `expires ${rel(ms(to), now)}`));
    return cell;
  }

  function when(t, now, extra) {
    if (!t) return el("td", { class: "rel" }, "–");
    const cell = el("td", { class: "nowrap" }, utc(ms(t)));
    cell.append(el("div", { class: "rel" }, extra || rel(ms(t), now)));
    return cell;
  }

  function renderGenerationTable(a, now) {
    const tbody = $("generation-rows");
    clear(tbody);
    const rows = a.authorities.slice().reverse();
    if (rows.length === 0) emptyRow(tbody, 8, "no generations");
    for (const g of rows) {
      const state = STATES.includes(g.state) ? g.state : "retired";
      const published = when(g.published_at, now);
      if (g.activatable_at) {
        published.append(el("div", { class: "rel" }, `may activate ${rel(ms(g.activatable_at), now)}`));
      }
      tbody.append(el("tr", { "data-generation": g.id, "data-state": state },
        el("td", { class: "mono" }, g.id),
        el("td", null, el("span", { class: `state ${state}` }, state)),
        validity(g.root_not_before || g.created_at, g.root_not_after, now),
        validity(g.intermediate_not_before, g.intermediate_not_after, now),
        published,
        when(g.activated_at, now),
        when(g.retiring_at || g.retired_at, now, g.retired_at ? `retired ${rel(ms(g.retired_at), now)}` : undefined),
        when(g.last_leaf_not_after, now)));
    }
  }

  function renderRate(act) {
    const root = $("rate-chart");
    clear(root);
    const mins = act.issuance_per_minute || [];
    $("activity-since").textContent = `this replica, counting since ${utc(ms(act.since))} UTC`;
    const W = Math.max(root.clientWidth || 520, 300), H = 150;
    const L = 34, R = 8, T = 10, B = 20;
    setAttrs(root, { viewBox: `0 0 ${W} ${H}` });
    const top = Math.max(1, ...mins.map((m) => m.issued + m.refused));
    const scale = niceCeil(top);
    const y = (v) => H - B - (v / scale) * (H - B - T);
    for (const v of [0, scale / 2, scale]) {
      root.append(svg("line", { x1: L, x2: W - R, y1: y(v), y2: y(v), class: v === 0 ? "axis-line" : "grid" }));
      root.append(svg("text", { x: L - 6, y: y(v) + 4, "text-anchor": "end" }, fmtCount(v)));
    }
    const n = Math.max(mins.length, 60);
    const bw = (W - L - R) / n;
    mins.forEach((m, i) => {
      const bx = L + i * bw + 0.5;
      const w = Math.max(1, bw - 1.5);
      if (m.issued > 0) {
        const r = svg("rect", { x: bx, y: y(m.issued), width: w, height: y(0) - y(m.issued), class: "bar-issued" });
        r.append(svg("title", null, `${utc(ms(m.minute))} UTC: ${m.issued} issued, ${m.refused} refused`));
        root.append(r);
      }
      if (m.refused > 0) {
        const r = svg("rect", {
          x: bx, y: y(m.issued + m.refused), width: w, height: y(m.issued) - y(m.issued + m.refused), class: "bar-refused",
        });
        r.append(svg("title", null, `${utc(ms(m.minute))} UTC: ${m.issued} issued, ${m.refused} refused`));
        root.append(r);
      }
    });
    for (const [i, label] of [[0, "−60 min"], [30, "−30 min"], [n - 1, "now"]]) {
      root.append(svg("text", { x: L + i * bw + bw / 2, y: H - 5, "text-anchor": i === 0 ? "start" : i === n - 1 ? "end" : "middle" }, label));
    }
    if (act.issued_last_hour === 0 && act.refused_last_hour === 0) {
      root.append(svg("text", { x: (L + W) / 2, y: H / 2, "text-anchor": "middle", class: "empty" }, "nothing issued in the last hour"));
    }
  }

  function niceCeil(v) {
    const p = Math.pow(10, Math.floor(Math.log10(v)));
    for (const k of [1, 2, 5, 10]) if (k * p >= v) return Math.max(2, k * p);
    return 10 * p;
  }

  function fmtCount(v) {
    return Number.isInteger(v) ? String(v) : v.toFixed(1);
  }

  function statusCell(code) {
    return el("td", { class: code < 400 ? "code-ok" : "code-bad" }, String(code));
  }

  function renderCells(act, now) {
    const tbody = $("cell-rows");
    clear(tbody);
    const cells = act.cells || [];
    $("cells-count").textContent = `${cells.length} seen by this replica`;
    if (cells.length === 0) emptyRow(tbody, 5, "no cell has called this replica since it started");
    for (const c of cells.slice(0, CELL_ROWS)) {
      tbody.append(el("tr", { "data-cell": c.name },
        el("td", { class: "clip", title: c.name }, c.name),
        el("td", { class: "mono clip", title: c.last_request }, c.last_request),
        statusCell(c.last_status),
        el("td", { class: "nowrap", title: `${utc(ms(c.last_request_at), true)} UTC` }, rel(ms(c.last_request_at), now)),
        el("td", { class: "num" }, String(c.requests))));
    }
    if (cells.length > CELL_ROWS) emptyRow(tbody, 5, `and ${cells.length - CELL_ROWS} more`);
  }

  function serialCell(serial) {
    const short = serial.length > 10 ? `${serial.slice(0, 10)}…` : serial;
    return el("td", { class: "mono", title: serial, "data-serial": serial }, short);
  }

  function expiresCell(notAfter, now) {
    const t = ms(notAfter);
    const cls = t <= now ? "gone" : t - now < 3600000 ? "soon" : "";
    return el("td", { class: `nowrap ${cls}`, title: `${utc(t, true)} UTC` }, t <= now ? `expired ${rel(t, now)}` : rel(t, now));
  }

  function renderExpiring(act, now) {
    const tbody = $("expiring-rows");
    clear(tbody);
    const list = act.expiring_soon || [];
    if (list.length === 0) emptyRow(tbody, 5, "nothing expires within the hour");
    for (const c of list.slice(0, 12)) {
      tbody.append(el("tr", null,
        el("td", null, c.kind),
        el("td", { class: "mono clip", title: c.subject }, c.subject),
        serialCell(c.serial),
        el("td", { class: "mono" }, c.authority_id),
        expiresCell(c.not_after, now)));
    }
  }

  function renderRecent(certs, now) {
    const tbody = $("recent-rows");
    clear(tbody);
    const list = certs.certificates || [];
    if (list.length === 0) emptyRow(tbody, 5, "no certificates yet");
    for (const c of list) {
      const subject = c.instance_guid || c.name || "";
      const exp = c.revoked_at
        ? el("td", { class: "gone", title: c.revocation_reason || "" }, "revoked")
        : expiresCell(c.not_after, now);
      tbody.append(el("tr", null,
        el("td", null, c.kind),
        el("td", { class: "mono clip", title: subject }, subject),
        serialCell(c.serial),
        el("td", { class: "mono" }, c.authority_id),
        exp));
    }
  }

  // What an operator looks for first in an entry's details; the other keys follow.
  const FIRST_KEYS = ["kind", "name", "instance_guid", "reason", "bundle_sequence", "authority_id", "not_after"];

  // The details of an audit entry on one line: key=value pairs, long values cut.
  function summarize(details) {
    if (details === null || typeof details !== "object") return details === undefined ? "" : String(details);
    const parts = [];
    const keys = Object.keys(details).sort((a, b) => {
      const ia = FIRST_KEYS.indexOf(a), ib = FIRST_KEYS.indexOf(b);
      return (ia < 0 ? 99 : ia) - (ib < 0 ? 99 : ib) || (a < b ? -1 : a > b ? 1 : 0);
    });
    for (const k of keys) {
      const v = details[k];
      let s = typeof v === "string" ? v : JSON.stringify(v);
      if (s.length > 48) s = `${s.slice(0, 46)}…`;
      parts.push(`${k}=${s}`);
    }
    const text = parts.join("  ");
    return text.length > 170 ? `${text.slice(0, 168)}…` : text;
  }

  function renderAudit(audit) {
    const tbody = $("audit-rows");
    clear(tbody);
    const entries = (audit.entries || []).slice().reverse();
    $("audit-note").textContent = `${audit.last} entr${audit.last === 1 ? "y" : "ies"}, the latest first`;
    if (entries.length === 0) emptyRow(tbody, 6, "the log is empty");
    for (const e of entries) {
      tbody.append(el("tr", { "data-seq": e.seq, "data-action": e.action },
        el("td", { class: "num mono" }, String(e.seq)),
        el("td", { class: "nowrap" }, utc(ms(e.time), true)),
        el("td", { class: "clip", title: e.actor }, shortActor(e.actor)),
        el("td", { class: "mono nowrap" }, e.action),
        el("td", { class: "mono clip", title: e.subject }, e.subject),
        el("td", { class: "mono details", title: JSON.stringify(e.details) }, summarize(e.details))));
    }
  }

  // ---- Start -------------------------------------------------------------------------------

  // The window is kept in the address (#30d, #48h), so a bookmark opens it.
  function setZoom(name) {
    zoom = Object.prototype.hasOwnProperty.call(ZOOMS, name) ? name : "lifetimes";
    for (const b of document.querySelectorAll("button[data-zoom]")) {
      b.setAttribute("aria-pressed", String(b.dataset.zoom === zoom));
    }
    if (lastData) renderTimeline(lastData.authorities, Date.now());
  }
  for (const button of document.querySelectorAll("button[data-zoom]")) {
    button.addEventListener("click", () => {
      setZoom(button.dataset.zoom);
      history.replaceState(null, "", zoom === "lifetimes" ? location.pathname : `#${zoom}`);
    });
  }
  setZoom(location.hash.slice(1));
  document.addEventListener("visibilitychange", () => {
    if (!document.hidden) refresh();
  });
  window.addEventListener("resize", () => {
    if (lastData) render(lastData);
  });
  setInterval(tick, 1000);
  refresh();
})();
