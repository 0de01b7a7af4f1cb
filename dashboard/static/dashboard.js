// citystream live dashboard. Receives `snapshot`, `history`, `quality` and `tick` events over SSE from
// /events and redraws. Every piece of data is written with text nodes or setAttribute, never
// parsed as HTML: names and messages come from sensors and files nobody fully trusts.
"use strict";
(() => {
  const SVG_NS = "http://www.w3.org/2000/svg";
  const WATCHDOG_MS = 60000;
  const S = {
    snap: null, hist: null, quality: null, series: new Map(), conn: "connecting", lastEvent: 0,
    lostSince: null, es: null,
  };

  // ---- DOM builders (text only) ----------------------------------------------------------
  const $ = (id) => document.getElementById(id);

  function el(tag, props, ...children) {
    const e = document.createElement(tag);
    setProps(e, props);
    for (const c of children.flat()) {
      if (c !== null && c !== undefined && c !== false) e.append(c instanceof Node ? c : String(c));
    }
    return e;
  }

  function setProps(e, props) {
    if (!props) return;
    for (const [k, v] of Object.entries(props)) {
      if (v === null || v === undefined) continue;
      if (k === "data") for (const [dk, dv] of Object.entries(v)) e.dataset[dk] = String(dv);
      else e.setAttribute(k, String(v));
    }
  }

  function sv(tag, attrs, parent) {
    const e = document.createElementNS(SVG_NS, tag);
    setProps(e, attrs);
    if (parent) parent.append(e);
    return e;
  }

  // ---- formatting ------------------------------------------------------------------------
  const num = (v) => (typeof v === "number" && Number.isFinite(v) ? v : null);

  function fixed(v, digits) {
    v = num(v);
    if (v === null) return "–";
    let s = v.toFixed(digits);
    if (Number(s) === 0) s = (0).toFixed(digits);
    return s.replace("-", "\u2212");
  }

  const int = (v) => (num(v) === null ? "–" : Math.round(v).toLocaleString("en-GB"));
  const trim = (v) => (num(v) === null ? "–" : String(Number(v.toFixed(1))));

  // A feed's KPI: counts (and figures of 1000 or more) whole with separators, others with one
  // decimal, below 1 with two.
  function kpiValue(v, integer) {
    v = num(v);
    if (v === null) return "–";
    if (integer || Math.abs(v) >= 1000) return int(v).replace("-", "\u2212");
    return fixed(v, v === 0 || Math.abs(v) >= 1 ? 1 : 2);
  }

  let timeFmt = new Intl.DateTimeFormat("en-GB", { hour: "2-digit", minute: "2-digit", hourCycle: "h23", timeZone: "UTC" });
  let clockFmt = timeFmt;
  let zoneFmt = null;

  function setTimeZone(tz) {
    if (S.tz === tz) return;
    S.tz = tz;
    try {
      timeFmt = new Intl.DateTimeFormat("en-GB", { hour: "2-digit", minute: "2-digit", hourCycle: "h23", timeZone: tz });
      clockFmt = new Intl.DateTimeFormat("en-GB", { hour: "2-digit", minute: "2-digit", second: "2-digit", hourCycle: "h23", timeZone: tz });
      zoneFmt = new Intl.DateTimeFormat("en-GB", { timeZone: tz, timeZoneName: "short" });
    } catch (_err) {
      zoneFmt = null;
    }
  }

  const hhmm = (ms) => timeFmt.format(new Date(ms));

  function ago(ms) {
    const s = Math.max(0, (Date.now() - ms) / 1000);
    if (s < 90) return `${Math.round(s)} s ago`;
    if (s < 5400) return `${Math.round(s / 60)} min ago`;
    if (s < 172800) return `${Math.round(s / 3600)} h ago`;
    return `${Math.round(s / 86400)} d ago`;
  }

  function windowMs(tag) {
    const m = /^(\d+)([smhd])$/.exec(tag || "");
    if (!m) return 15 * 60000;
    return Number(m[1]) * { s: 1000, m: 60000, h: 3600000, d: 86400000 }[m[2]];
  }

  const isStale = (p) => Date.now() - p.time_ms > 3 * windowMs(p.window) + 120000;

  // How many sensors a KPI point comes from ("computed from 37 of 40 meters"), added to `box`.
  function addCoverage(box, p, what) {
    const c = p && p.coverage;
    if (c) box.append(el("div", { class: "coverage", title: c.text, data: { coverage: what } }, c.text));
  }

  function badge(onTrack) {
    if (onTrack === true) return el("span", { class: "badge on" }, "On track");
    if (onTrack === false) return el("span", { class: "badge off" }, "Off track");
    return el("span", { class: "badge none" }, "–");
  }

  function statusClass(onTrack, v) {
    if (onTrack === true) return "good";
    return v !== null && v < 0 ? "bad" : "warn";
  }

  // ---- charts ----------------------------------------------------------------------------
  function bullet(v, target, dom, cls, label) {
    const W = 300, H = 14, [lo, hi] = dom;
    const x = (val) => ((Math.min(hi, Math.max(lo, val)) - lo) / (hi - lo)) * W;
    const s = sv("svg", { class: "bullet", viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: "none", role: "img", "aria-label": label });
    sv("rect", { class: "track", x: 0, y: 3, width: W, height: H - 6, rx: 3 }, s);
    if (v !== null) {
      const a = x(0), b = x(v);
      sv("rect", { class: `bar ${cls}`, x: Math.min(a, b), y: 3, width: Math.max(2, Math.abs(b - a)), height: H - 6, rx: 2 }, s);
    }
    sv("line", { class: "zero", x1: x(0), x2: x(0), y1: 1, y2: H - 1, "vector-effect": "non-scaling-stroke" }, s);
    if (num(target) !== null) {
      sv("line", { class: "target", x1: x(target), x2: x(target), y1: 0, y2: H, "vector-effect": "non-scaling-stroke" }, s);
    }
    return s;
  }

  function seriesOf(measurement, entity, field) {
    return S.series.get(`${measurement}\u0000${entity}\u0000${field}`);
  }

  function segments(series, x, y, start) {
    const out = [];
    let cur = [];
    const steps = [];
    for (let i = 1; i < series.t.length; i++) steps.push(series.t[i] - series.t[i - 1]);
    steps.sort((a, b) => a - b);
    const gap = Math.max(3 * (steps[Math.floor(steps.length / 2)] || 0), 45 * 60000);
    for (let i = 0; i < series.t.length; i++) {
      if (series.t[i] < start) continue;
      if (cur.length && series.t[i] - series.t[i - 1] > gap) { out.push(cur); cur = []; }
      cur.push([x(series.t[i]), y(series.v[i])]);
    }
    if (cur.length) out.push(cur);
    return out;
  }

  function spark(series, opts) {
    const cls = opts.cls;
    if (!S.hist || !series || !series.t.length) return el("div", { class: "spark-empty" }, S.hist ? "no history yet" : "loading history…");
    const W = 300, H = 40, start = S.hist.start_ms, end = S.hist.end_ms;
    // The scale follows the bulk of the data (3rd to 97th percentile): a wild first window after
    // a restart must not flatten the rest of the day. Outliers are drawn at the edge.
    const data = [...series.v, ...(opts.extra ? opts.extra.v : [])].sort((a, b) => a - b);
    const q = (p) => data[Math.round(p * (data.length - 1))];
    const refs = (opts.refs || []).map((r) => r.v).filter((v) => num(v) !== null);
    let lo = Math.min(data.length >= 20 ? q(0.03) : data[0], ...refs);
    let hi = Math.max(data.length >= 20 ? q(0.97) : data[data.length - 1], ...refs);
    if (opts.floor !== undefined) lo = Math.min(lo, opts.floor);
    if (opts.ceil !== undefined) hi = Math.max(hi, opts.ceil);
    if (hi - lo < 1e-9) { lo -= 1; hi += 1; }
    const pad = (hi - lo) * 0.08;
    lo -= pad; hi += pad;
    const x = (t) => ((Math.max(start, Math.min(end, t)) - start) / (end - start)) * W;
    const y = (v) => H - ((Math.max(lo, Math.min(hi, v)) - lo) / (hi - lo)) * H;
    const s = sv("svg", { class: `spark ${cls}`, viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: "none", role: "img", "aria-label": opts.label || "last 24 hours" });
    for (const r of opts.refs || []) {
      if (num(r.v) === null) continue;
      sv("line", { class: `ref ${r.cls}`, x1: 0, x2: W, y1: y(r.v), y2: y(r.v), "vector-effect": "non-scaling-stroke" }, s);
    }
    if (opts.extra && opts.extra.t.length) {
      for (const seg of segments(opts.extra, x, y, start)) {
        sv("polyline", { class: "line baseline", points: seg.map((p) => p.join(",")).join(" "), "vector-effect": "non-scaling-stroke" }, s);
      }
    }
    const segs = segments(series, x, y, start);
    for (const seg of segs) {
      const pts = seg.map((p) => p.join(",")).join(" ");
      if (seg.length > 1) {
        sv("polygon", { class: "area", points: `${seg[0][0]},${H} ${pts} ${seg[seg.length - 1][0]},${H}` }, s);
      }
      sv("polyline", { class: "line", points: pts, "vector-effect": "non-scaling-stroke" }, s);
    }
    const last = segs.length ? segs[segs.length - 1].slice(-1)[0] : null;
    if (last) sv("path", { class: "dot", d: `M${last[0]} ${last[1]} l0.01 0`, "vector-effect": "non-scaling-stroke" }, s);
    return s;
  }

  function ring(v, cls, field, label) {
    const R = 48, C = 2 * Math.PI * R, arc = 0.75 * C;
    const s = sv("svg", { class: "ring", viewBox: "0 0 120 112", role: "img", "aria-label": label });
    sv("circle", { class: "track", cx: 60, cy: 60, r: R, "stroke-dasharray": `${arc} ${C}`, transform: "rotate(135 60 60)" }, s);
    const frac = num(v) === null ? 0 : Math.max(0, Math.min(1, v / 100));
    if (frac > 0) {
      sv("circle", { class: `arc ${cls}`, cx: 60, cy: 60, r: R, "stroke-dasharray": `${arc * frac} ${C}`, transform: "rotate(135 60 60)" }, s);
    }
    const t = sv("text", { x: 60, y: 56, data: { field } }, s);
    t.textContent = fixed(v, 0);
    const u = sv("text", { class: "pct", x: 60, y: 80 }, s);
    u.textContent = "%";
    return s;
  }

  // ---- views -----------------------------------------------------------------------------
  function savingDomain(points, targets, minLo, minHi) {
    const vals = points.map((p) => (p ? num(p.fields.saving_pct_24h) : null)).filter((v) => v !== null);
    const lo = Math.min(minLo, ...vals), hi = Math.max(minHi, ...targets.map((t) => t * 1.6), ...vals);
    const pad = (hi - lo) * 0.03;
    return [lo - pad, hi + pad];
  }

  function savingKpi(kind, d, p, cityTarget, dom) {
    const label = kind === "water" ? "Water" : "Energy";
    const box = el("div", { class: "kpi", data: { kpi: kind } });
    box.append(el("div", { class: "kpi-head" }, el("span", { class: `kpi-name ${kind}` }, label), p ? badge(p.fields.on_track) : null));
    if (!p) {
      box.append(el("div", { class: "empty small" }, `No ${kind} data yet`));
      return box;
    }
    const f = p.fields;
    const v = num(f.saving_pct_24h);
    const target = num(f.target_pct) ?? cityTarget;
    const cls = statusClass(f.on_track, v);
    box.append(el("div", { class: "kpi-main" },
      el("span", { class: `big ${cls}`, data: { field: `${kind}.saving_pct_24h` } }, fixed(v, 1)),
      el("span", { class: "unit" }, "%"),
      el("span", { class: "vs" }, `target ${trim(target)} %`)));
    box.append(bullet(v, target, dom, cls, `${label} saving ${fixed(v, 1)} % against target ${trim(target)} %`));
    box.append(spark(seriesOf(`${kind}_kpi`, d.id, "saving_pct_24h"), { cls: kind, refs: [{ v: target, cls: "target" }], label: `${label} saving, last 24 h` }));
    box.append(el("div", { class: `kpi-foot${isStale(p) ? " stale" : ""}` },
      `last ${p.window || "window"}: `, el("b", { data: { field: `${kind}.saving_pct` } }, `${fixed(f.saving_pct, 1)} %`),
      isStale(p) ? ` · ${hhmm(p.time_ms)}` : ""));
    addCoverage(box, p, kind);
    return box;
  }

  function renderDistricts(snap) {
    const ds = snap.districts;
    const dom = {
      water: savingDomain(ds.map((d) => d.water), ds.map((d) => d.water_target_pct), -10, 30),
      energy: savingDomain(ds.map((d) => d.energy), ds.map((d) => d.energy_target_pct), -5, 6),
    };
    $("districts").replaceChildren(...ds.map((d) => {
      const card = el("article", { class: "card district", data: { district: d.id } },
        el("header", { class: "card-head" }, el("h3", { title: d.name }, d.name),
          d.in_city ? null : el("span", { class: "tag" }, "not in city file")));
      if (!d.water && !d.energy) card.append(el("div", { class: "empty" }, `No data yet for ${d.name}`));
      else {
        card.append(el("div", { class: "pair" },
          savingKpi("water", d, d.water, d.water_target_pct, dom.water),
          savingKpi("energy", d, d.energy, d.energy_target_pct, dom.energy)));
      }
      return card;
    }));
  }

  // Halving congestion is the target: green at or below half the baseline, red above twice it
  // (the `congestion` alert); a little slack keeps near-zero night values from flickering.
  function congestionClass(index, base) {
    if (index === null || base === null) return "";
    if (index <= base / 2 + 0.01) return "good";
    if (index <= base + 0.01) return "";
    return index > 2 * base + 0.02 ? "bad" : "warn";
  }

  function renderJunctions(snap) {
    const names = new Map(snap.districts.map((d) => [d.id, d.name]));
    const idx = snap.junctions.flatMap((j) => (j.traffic ? [num(j.traffic.fields.congestion_index), num(j.traffic.fields.baseline_congestion_index)] : []))
      .filter((v) => v !== null);
    const top = Math.max(0.5, ...idx) * 1.08;
    const targets = [...new Set(snap.junctions.map((j) => (j.traffic ? num(j.traffic.fields.target_pct) : null) ?? j.target_pct))];
    const redHead = targets.length === 1 ? `24 h cut, target ${trim(targets[0])} %` : "24 h cut vs target";
    const head = () => el("div", { class: "jrow head" }, el("div", null, "Junction"), el("div", null, "Now / baseline"),
      el("div", null, redHead), el("div", null, "Flow, speed"), el("div", null, "Index, 24 h"));
    const rows = snap.junctions.map((j) => {
      const where = names.get(j.district) || j.district;
      const row = el("div", { class: "jrow", data: { junction: j.id } },
        el("div", { class: "jname", title: `${j.name} (${where})` }, el("div", { class: "name" }, j.name),
          j.in_city ? null : el("div", { class: "where stale" }, `${where} · not in city file`)));
      const p = j.traffic;
      if (!p) {
        row.append(el("div", { class: "empty small" }, `No data yet for ${j.name}`));
        return row;
      }
      addCoverage(row.firstChild, p, "traffic");
      const f = p.fields;
      const ci = num(f.congestion_index), base = num(f.baseline_congestion_index);
      const cmp = sv("svg", { class: "cmp", viewBox: "0 0 100 8", preserveAspectRatio: "none", role: "img", "aria-label": `congestion ${fixed(ci, 2)} against baseline ${fixed(base, 2)}` });
      sv("rect", { class: "track", x: 0, y: 1, width: 100, height: 6, rx: 3 }, cmp);
      if (ci !== null) sv("rect", { class: `bar ${congestionClass(ci, base) || "neutral"}`, x: 0, y: 1, width: Math.max(1.5, (Math.min(ci, top) / top) * 100), height: 6, rx: 3 }, cmp);
      if (base !== null) sv("line", { class: "base", x1: (Math.min(base, top) / top) * 100, x2: (Math.min(base, top) / top) * 100, y1: -2, y2: 10, "vector-effect": "non-scaling-stroke" }, cmp);
      const red = num(f.reduction_pct_24h);
      row.append(
        el("div", null,
          el("div", { class: "line1" }, el("span", { class: `mid ${congestionClass(ci, base)}`, data: { field: "traffic.congestion_index" } }, fixed(ci, 2)),
            el("span", { class: "small", title: "baseline" }, `/ ${fixed(base, 2)}`)),
          cmp),
        el("div", null,
          el("div", { class: "line1" }, el("span", { class: `mid ${statusClass(f.on_track, red)}` }, el("span", { data: { field: "traffic.reduction_pct_24h" } }, fixed(red, 1)), el("span", { class: "unit" }, " %")),
          ),
          el("div", { title: `target ${trim(num(f.target_pct) ?? j.target_pct)} %` }, badge(f.on_track))),
        el("div", { class: "flow" },
          el("div", null, el("span", { class: "num", data: { field: "traffic.flow_veh_h" } }, int(f.flow_veh_h)), el("span", { class: "small" }, " veh/h")),
          el("div", null, el("span", { class: "num" }, int(f.space_mean_speed_kmh)), el("span", { class: "small" }, " km/h"))),
        el("div", { class: `jspark${isStale(p) ? " stale" : ""}` },
          spark(seriesOf("traffic_kpi", j.id, "congestion_index"), {
            cls: "traffic", extra: seriesOf("traffic_kpi", j.id, "baseline_congestion_index"), floor: 0,
            label: `${j.name}: congestion index and baseline, last 24 h`,
          })));
      return row;
    });
    if (!rows.length) { $("junctions").replaceChildren(el("div", { class: "empty" }, "No junctions in the city file")); return; }
    const half = Math.ceil(rows.length / 2);
    $("junctions").replaceChildren(el("div", { class: "jcol" }, head(), ...rows.slice(0, half)),
      el("div", { class: "jcol" }, head(), ...rows.slice(half)));
  }

  function level(v, good, warn) {
    if (v === null) return "neutral";
    if (v >= good) return "good";
    return v >= warn ? "warn" : "bad";
  }

  function renderRoutes(snap) {
    const box = $("routes");
    if (!snap.routes.length) { box.replaceChildren(el("div", { class: "empty" }, "No shuttle routes in the city file")); return; }
    box.replaceChildren(...snap.routes.map((r) => {
      const p = r.shuttle;
      const route = el("article", { class: "route", data: { route: r.id } }, el("h3", { title: r.name }, r.name));
      if (!p) {
        route.append(el("div", { class: "empty" }, `No data yet for ${r.name}`));
        return route;
      }
      const f = p.fields;
      route.append(el("div", { class: `small${isStale(p) ? " stale" : ""}` },
        `${r.fleet_size ? `fleet ${r.fleet_size} · ` : ""}${r.in_city ? "" : "not in city file · "}window to ${hhmm(p.time_ms)}`));
      const gauge = (field, label, cls) => el("div", { class: "gauge" },
        ring(num(f[field]), cls, `shuttle.${field}`, `${label} ${fixed(f[field], 0)} %`),
        el("div", { class: "glabel" }, label),
        spark(seriesOf("shuttle_kpi", r.id, field), { cls: "shuttle", floor: 0, ceil: 100, label: `${label}, last 24 h` }));
      route.append(el("div", { class: "gauges" },
        gauge("occupancy_pct", "Occupancy", "neutral"),
        gauge("on_time_pct", "On time", level(num(f.on_time_pct), 90, 75)),
        gauge("mean_battery_pct", "Battery", level(num(f.mean_battery_pct), 50, 20))));
      const inService = r.fleet_size && num(f.availability_pct) !== null ? `${Math.round((f.availability_pct / 100) * r.fleet_size)} / ${r.fleet_size}` : `${fixed(f.availability_pct, 0)} %`;
      const dis = num(f.disengagements);
      route.append(el("dl", { class: "facts" },
        el("div", null, el("dt", null, "In service"), el("dd", { data: { field: "shuttle.availability" } }, inService)),
        el("div", null, el("dt", null, "Boardings"), el("dd", null, int(f.boardings))),
        el("div", null, el("dt", null, "Disengaged"), el("dd", { class: dis ? "bad" : "" }, int(dis)))));
      addCoverage(route, p, "shuttle");
      return route;
    }));
  }

  // ---- declared feeds (one panel each, built from the feed's spec in the snapshot) ---------
  function feedDomain(feed) {
    const t = feed.target;
    const vals = feed.entities.map((e) => (e.point ? num(e.point.fields[t.field]) : null)).filter((v) => v !== null);
    const limits = feed.entities.map((e) => (e.point ? num(e.point.fields.target) : null)).filter((v) => v !== null);
    const lo = Math.min(0, ...vals), hi = Math.max(...vals, ...[t.limit, ...limits].map((l) => l * 1.3), 1e-9);
    const pad = (hi - lo) * 0.03;
    return [lo - pad, hi + pad];
  }

  const withUnit = (text, unit) => (unit ? `${text} ${unit}` : text);

  function feedTarget(feed, e, p, dom) {
    const t = feed.target, f = p.fields;
    const v = num(f[t.field]);
    const limit = num(f.target) ?? t.limit;
    const onTrack = typeof f.on_track === "boolean" ? f.on_track : null;
    const cls = onTrack === true ? "good" : onTrack === false ? "warn" : "";
    const dir = t.direction === "at_most" ? "at most" : "at least";
    const goal = withUnit(`${dir} ${trim(limit)}`, t.unit);
    return el("div", { class: "kpi feed-target", data: { target: t.kpi } },
      el("div", { class: "kpi-head" }, el("span", { class: "kpi-name feed" }, `${t.title} · 24 h`), badge(onTrack)),
      el("div", { class: "kpi-main" },
        el("span", { class: `big ${cls}`, data: { field: `${feed.kind}.${t.field}` } }, kpiValue(v, false)),
        t.unit ? el("span", { class: "unit" }, t.unit) : null,
        el("span", { class: "vs", data: { field: `${feed.kind}.target` } }, `target ${goal}`)),
      bullet(v, limit, dom, cls || "neutral", `${e.name}: ${t.title} over 24 h ${withUnit(kpiValue(v, false), t.unit)}, target ${goal}`));
  }

  function feedCard(feed, e, dom, alerts) {
    const card = el("article", { class: `card feed-entity${alerts.length ? " alerting" : ""}`, data: { entity: e.id } },
      el("header", { class: "card-head" }, el("h3", { title: e.name }, e.name),
        e.in_city === false ? el("span", { class: "tag" }, "not in city file") : null,
        alerts.length ? el("span", { class: "tag alert-tag" }, alerts.length === 1 ? "1 alert" : `${alerts.length} alerts`) : null));
    const p = e.point;
    if (!p) {
      card.append(el("div", { class: "empty" }, `No data yet for ${e.name}`));
      return card;
    }
    if (feed.target) card.append(feedTarget(feed, e, p, dom));
    const chart = feed.kpis.find((k) => k.name === feed.chart) || { title: feed.chart, unit: "" };
    const limit = feed.target ? num(p.fields.target) ?? feed.target.limit : null;
    card.append(el("div", { class: "spark-title" }, `${withUnit(chart.title, chart.unit ? `(${chart.unit})` : "")} · last 24 h`),
      spark(seriesOf(feed.measurement, e.id, feed.chart), {
        cls: "feed", refs: limit === null ? [] : [{ v: limit, cls: "target" }],
        label: `${e.name}: ${chart.title}, last 24 h`,
      }));
    card.append(el("dl", { class: "feed-kpis" }, ...feed.kpis.map((k) => el("div", { data: { kpi: k.name } },
      el("dt", { title: k.name }, k.title),
      el("dd", null, el("span", { data: { field: `${feed.kind}.${k.name}` } }, kpiValue(p.fields[k.name], k.integer)),
        k.unit ? el("span", { class: "unit" }, ` ${k.unit}`) : null)))));
    card.append(el("div", { class: `kpi-foot${isStale(p) ? " stale" : ""}` }, `last ${p.window || "window"}: to ${hhmm(p.time_ms)}`));
    addCoverage(card, p, feed.kind);
    return card;
  }

  function feedSub(feed) {
    const parts = [`per ${feed.entity_title.toLowerCase()}`, `${feed.window} windows`];
    const t = feed.target;
    if (t) parts.push(`target: ${t.title} over 24 h ${t.direction === "at_most" ? "at most" : "at least"} ${withUnit(trim(t.limit), t.unit)}`);
    parts.push("chart: last 24 h");
    return parts.join(" · ");
  }

  function renderFeeds(snap) {
    const box = $("feeds");
    const feeds = snap.feeds || [];
    box.hidden = !feeds.length;
    box.replaceChildren(...feeds.map((feed) => {
      const alerts = snap.alerts.filter((a) => a.kind === feed.kind);
      const count = el("span", { class: `count${alerts.length ? "" : " zero"}`, title: "active alerts" }, String(alerts.length));
      const panel = el("section", { class: "panel feed", data: { feed: feed.kind }, "aria-label": feed.title },
        el("header", { class: "panel-head" }, el("h2", null, el("span", { class: "feed-title" }, feed.title), count),
          el("p", { class: "sub" }, feedSub(feed))));
      if (!feed.entities.length) {
        panel.append(el("div", { class: "empty" }, `No data yet for ${feed.title}`));
      } else {
        const dom = feed.target ? feedDomain(feed) : null;
        panel.append(el("div", { class: "cards feed-cards" }, ...feed.entities.map((e) => feedCard(feed, e, dom, alerts.filter((a) => a.entity === e.id)))));
      }
      if (alerts.length) {
        panel.append(el("ol", { class: "alert-list feed-alerts" }, ...alerts.map((a) => {
          const [title, sev] = alertLook(a, snap);
          return el("li", { class: `alert ${sev}`, data: { feedAlert: `${a.kind}/${a.entity}/${a.rule}` } },
            el("div", { class: "alert-head" }, el("span", { class: "rule" }, title), el("span", { class: "when" }, `since ${hhmm(a.time_ms)}`)),
            el("div", { class: "entity" }, a.entity_name),
            a.message ? el("div", { class: "msg" }, a.message) : null);
        })));
      }
      return panel;
    }));
  }

  const RULES = {
    leak: ["Possible leak", "high"], congestion: ["Congestion", "high"], battery_low: ["Low battery", "high"],
    off_track: ["Off track", "medium"], silent: ["Sensor silent", "low"],
  };

  // The rule in words and its severity: the built-in rules' own, a feed's declared rules amber.
  function alertLook(a, snap) {
    const feed = (snap.feeds || []).find((f) => f.kind === a.kind);
    const declared = feed && feed.rules.some((r) => r.rule === a.rule);
    return (!declared && RULES[a.rule]) || [a.rule_title || a.rule, "medium"];
  }

  function renderAlerts(snap) {
    const list = snap.alerts;
    const count = $("alert-count");
    count.textContent = String(list.length);
    count.className = list.length ? "count" : "count zero";
    if (!list.length) {
      $("alerts").replaceChildren(el("li", { class: "all-clear" }, el("span", { class: "tick" }, "✓"), "No active alerts"));
      return;
    }
    $("alerts").replaceChildren(...list.map((a) => {
      const [title, sev] = alertLook(a, snap);
      return el("li", { class: `alert ${sev}`, data: { alert: `${a.kind}/${a.entity}/${a.rule}` } },
        el("div", { class: "alert-head" }, el("span", { class: "rule" }, title), el("span", { class: "when" }, `since ${hhmm(a.time_ms)}`)),
        el("div", { class: "entity" }, a.entity_name, el("span", { class: "kind" }, a.kind_title || a.kind)),
        a.message ? el("div", { class: "msg" }, a.message) : null);
    }));
  }

  // ---- sensors needing attention (the `quality` event) ------------------------------------
  function scoreClass(score, min) {
    if (num(score) === null || score < min / 2) return "bad";
    return "warn";
  }

  function forHours(ms) {
    const h = Math.round(ms / 3600000);
    return h < 48 ? `${h} h` : `${Math.round(h / 24)} d`;
  }

  function renderQuality() {
    const q = S.quality;
    const count = $("attention-count");
    if (!q) return;
    count.textContent = String(q.total);
    count.className = q.total ? "count" : "count zero";
    const shown = q.sensors.length < q.total ? ` · the worst ${q.sensors.length} of ${q.total}` : "";
    $("attention-sub").textContent = `Latest hour of each sensor, last ${q.hours} h: score below ${trim(q.min_score)}, rejected readings or stuck · worst first${shown}`;
    if (!q.sensors.length) {
      $("attention").replaceChildren(el("li", { class: "all-clear" }, el("span", { class: "tick" }, "✓"), `No sensor needs attention in the last ${q.hours} h`));
      return;
    }
    $("attention").replaceChildren(...q.sensors.map((s) => el("li", { class: "sensor", data: { sensor: `${s.kind}/${s.district}/${s.sensor_id}` } },
      el("span", { class: `score ${scoreClass(s.score, q.min_score)}`, title: "score (0-100) of its latest hour" }, num(s.score) === null ? "–" : fixed(s.score, 0)),
      el("span", { class: "who" }, el("span", { class: "sid" }, s.sensor_id),
        el("span", { class: "where" }, `${s.kind_title} · ${s.district_name}`)),
      el("span", { class: "why" }, s.problems.join(" · ")),
      el("span", { class: "when", title: `latest hour to ${hhmm(s.hour_ms)}` }, `since ${hhmm(s.since_ms)} · ${forHours(s.hour_ms - s.since_ms)}`))));
  }

  function renderPipeline(snap) {
    const items = snap.pipeline.map((c) => {
      const f = c.fields, parts = [];
      if (num(f.received) !== null && f.received > 0) parts.push(`${int(f.received)} received`);
      if (num(f.rejected) !== null && num(f.received)) parts.push(`${fixed((100 * f.rejected) / f.received, 1)} % rejected`);
      if (num(f.written) !== null && f.written > 0) parts.push(`${int(f.written)} written`);
      const late = Date.now() - c.time_ms > 60000;
      return el("span", { class: `comp${late ? " late" : ""}`, data: { component: `${c.component}/${c.instance}` } },
        el("b", null, `${c.component} ${c.instance}`), ` ${parts.join(" · ")}${parts.length ? " · " : " "}${ago(c.time_ms)}`);
    });
    $("pipeline").replaceChildren(...(items.length ? items : [el("span", { class: "comp late" }, "No pipeline counters in the last hour")]));
  }

  function renderStatus() {
    const snap = S.snap;
    const banner = $("banner");
    let state = S.conn;
    if (snap && !snap.influx.ok && S.conn === "live") state = "down";
    const pill = $("conn");
    pill.dataset.state = state;
    $("conn-text").textContent = { live: "live", down: "InfluxDB down", reconnecting: "reconnecting", connecting: "connecting" }[state];
    if (snap && !snap.influx.ok) {
      banner.dataset.kind = "influx";
      banner.replaceChildren(
        el("strong", null, `InfluxDB unreachable since ${hhmm(snap.influx.down_since_ms)}`),
        el("span", { class: "detail" }, snap.influx.error || ""),
        el("span", null, snap.latest_ms ? `Showing the last data read (to ${hhmm(snap.latest_ms)}).` : "No data read yet."));
      banner.hidden = false;
    } else if (S.conn === "reconnecting" && S.lostSince) {
      banner.dataset.kind = "conn";
      banner.replaceChildren(el("strong", null, `Dashboard server unreachable since ${hhmm(S.lostSince)}`),
        el("span", null, "Reconnecting… the figures below may be out of date."));
      banner.hidden = false;
    } else {
      banner.hidden = true;
    }
    document.querySelector("main").classList.toggle("dim-all", Boolean(snap && !snap.influx.ok) || S.conn === "reconnecting");
  }

  function renderClock() {
    const now = new Date();
    $("clock").textContent = clockFmt.format(now);
    if (zoneFmt) {
      const zone = zoneFmt.formatToParts(now).find((p) => p.type === "timeZoneName");
      $("clock-tz").textContent = zone ? zone.value : "";
    }
    const snap = S.snap;
    if (snap && snap.latest_ms) {
      $("latest").textContent = hhmm(snap.latest_ms);
      const agoEl = $("latest-ago");
      agoEl.textContent = `(${ago(snap.latest_ms)})`;
      agoEl.className = Date.now() - snap.latest_ms > 30 * 60000 ? "ago late" : "ago";
    } else {
      $("latest").textContent = "no data yet";
      $("latest-ago").textContent = "";
    }
    if (S.conn === "live" && S.lastEvent && Date.now() - S.lastEvent > WATCHDOG_MS) reconnect();
  }

  function renderAll() {
    const snap = S.snap;
    if (!snap) return;
    setTimeZone(snap.timezone);
    $("city-name").textContent = snap.city;
    document.title = `${snap.city} · citystream live operations`;
    renderDistricts(snap);
    renderJunctions(snap);
    renderRoutes(snap);
    renderFeeds(snap);
    renderAlerts(snap);
    renderPipeline(snap);
    renderQuality();
    renderStatus();
    renderClock();
    document.body.dataset.rendered = String(Date.now());
  }

  // ---- transport -------------------------------------------------------------------------
  function onEvent(kind, handler) {
    return (ev) => {
      S.lastEvent = Date.now();
      if (S.conn !== "live") { S.conn = "live"; S.lostSince = null; }
      let data;
      try { data = JSON.parse(ev.data); } catch (_err) { return; }
      handler(data);
      document.body.dataset[`${kind}Events`] = String(Number(document.body.dataset[`${kind}Events`] || 0) + 1);
    };
  }

  function connect() {
    const es = new EventSource("/events");
    S.es = es;
    es.addEventListener("snapshot", onEvent("snapshot", (d) => { S.snap = d; renderAll(); }));
    es.addEventListener("history", onEvent("history", (d) => {
      S.hist = d;
      S.series = new Map(d.series.map((s) => [`${s.measurement}\u0000${s.entity}\u0000${s.field}`, s]));
      renderAll();
    }));
    es.addEventListener("quality", onEvent("quality", (d) => { S.quality = d; renderQuality(); }));
    es.addEventListener("tick", onEvent("tick", () => renderStatus()));
    es.addEventListener("ping", onEvent("ping", () => renderStatus()));
    es.onopen = () => { S.lastEvent = Date.now(); };
    es.onerror = () => {
      if (S.conn !== "reconnecting") { S.conn = "reconnecting"; S.lostSince = Date.now(); }
      renderStatus();
      if (es.readyState === EventSource.CLOSED) setTimeout(reconnect, 5000);
    };
  }

  function reconnect() {
    if (S.es) S.es.close();
    S.conn = "reconnecting";
    S.lostSince = S.lostSince || Date.now();
    renderStatus();
    connect();
  }

  document.addEventListener("DOMContentLoaded", () => {
    renderClock();
    setInterval(renderClock, 1000);
    connect();
  });
})();
