// The live night page: fetch the daemon's JSON every few seconds and redraw.
//
// Everything from the database is put in the document as text (textContent, SVG <title>,
// attribute values set with setAttribute): never as markup.  The plots are inline SVG
// drawn here, with no library and nothing fetched from another host.
"use strict";

const REFRESH_MS = 5000;
const SVG = "http://www.w3.org/2000/svg";
const W = 540, H = 250;
const AREA = { left: 58, right: W - 62, top: 26, bottom: 176 };
const STRIP = 212;  // y of the strip of frames whose value is undetermined

const PLOTS = [
  { id: "iq", measure: "iq", field: "value", bands: true,
    title: "IQ: natural seeing at zenith", unit: "arcsec" },
  { id: "fwhm", measure: "iq", field: "fwhm", title: "IQ: FWHM as measured", unit: "arcsec" },
  { id: "strehl", measure: "iq", field: "strehl", title: "IQ: Strehl ratio", unit: "" },
  { id: "cc", measure: "cc", field: "value", bands: true,
    title: "CC: cloud extinction", unit: "mag" },
  { id: "zp", measure: "cc", field: "zeropoint", title: "CC: zero point (mean of arrays)",
    unit: "mag" },
  { id: "bg", measure: "bg", field: "value", bands: true, invert: true,
    title: "BG: sky brightness (brighter up)", unit: "mag/arcsec²" },
];

// --- DOM helpers: text only ------------------------------------------------------------
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v !== null && v !== undefined) node.setAttribute(k, String(v));
  }
  for (const c of children) {
    if (c === null || c === undefined) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

function svg(tag, attrs, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v !== null && v !== undefined) node.setAttribute(k, String(v));
  }
  if (text !== undefined) node.textContent = String(text);
  return node;
}

function fmt(v, digits) {
  if (v === null || v === undefined || !Number.isFinite(v)) return "–";
  return v.toFixed(digits === undefined ? 3 : digits);
}

function utTime(iso) {
  if (!iso) return "–";
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? String(iso) : d.toISOString().slice(11, 19);
}

// --- scales and ticks --------------------------------------------------------------------
function niceStep(span, count) {
  const raw = span / Math.max(1, count);
  const mag = Math.pow(10, Math.floor(Math.log10(raw)));
  for (const m of [1, 2, 2.5, 5, 10]) {
    if (raw <= m * mag) return m * mag;
  }
  return 10 * mag;
}

function ticks(lo, hi, count) {
  const step = niceStep(hi - lo, count);
  const out = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) {
    out.push(Math.abs(v) < step * 1e-9 ? 0 : v);
  }
  return { values: out, step: step };
}

const TIME_STEPS = [1, 2, 5, 10, 15, 20, 30, 60, 120, 180, 360].map((m) => m * 60000);

function timeTicks(lo, hi) {
  const step = TIME_STEPS.find((s) => (hi - lo) / s <= 6) || TIME_STEPS[TIME_STEPS.length - 1];
  const out = [];
  for (let t = Math.ceil(lo / step) * step; t <= hi; t += step) out.push(t);
  return out;
}

function timeDomain(frames) {
  const times = frames.map((f) => Date.parse(f.ut)).filter(Number.isFinite);
  if (!times.length) return null;
  let lo = Math.min(...times), hi = Math.max(...times);
  if (hi - lo < 600000) { const mid = (lo + hi) / 2; lo = mid - 300000; hi = mid + 300000; }
  const pad = (hi - lo) * 0.04;
  return [lo - pad, hi + pad];
}

// --- bands ---------------------------------------------------------------------------------
// The bands of one limits object, best first: {name, from, to} in value units.
function bandRanges(prefix, limits, better) {
  const entries = Object.entries(limits || {}).filter(([, v]) => Number.isFinite(v))
    .sort((a, b) => Number(a[0]) - Number(b[0]));
  const out = [];
  let edge = better === "lower" ? -Infinity : Infinity;
  for (const [pct, limit] of entries) {
    if (limit !== edge) out.push({ name: prefix + pct, from: edge, to: limit });
    edge = limit;
  }
  out.push({ name: prefix + "Any", from: edge, to: better === "lower" ? Infinity : -Infinity });
  return out;
}

function requestedLimit(requested, limits, better) {
  if (!requested) return null;
  const suffix = requested.replace(/^[A-Za-z]{2}/, "");
  if (suffix === "Any") return better === "lower" ? Infinity : -Infinity;
  const v = (limits || {})[suffix];
  return Number.isFinite(v) ? v : null;
}

function yDomain(values, limitSets) {
  let lo = Math.min(...values), hi = Math.max(...values);
  const limits = [...new Set(limitSets.flatMap((l) => Object.values(l || {})))]
    .filter(Number.isFinite).sort((a, b) => a - b);
  if (!values.length) {
    if (!limits.length) return [0, 1];
    lo = limits[0]; hi = limits[limits.length - 1];
  } else if (limits.length) {
    // the limits inside the data's range, and the nearest one on each side of it
    const below = limits.filter((v) => v < lo), above = limits.filter((v) => v > hi);
    if (below.length) lo = below[below.length - 1];
    if (above.length) hi = above[0];
  }
  if (hi - lo < 1e-6) { lo -= Math.max(0.05, Math.abs(lo) * 0.05); hi += Math.max(0.05, Math.abs(hi) * 0.05); }
  const pad = (hi - lo) * 0.08;
  return [lo - pad, hi + pad];
}

// --- one plot ------------------------------------------------------------------------------
function tooltip(spec, f) {
  const m = f[spec.measure] || {};
  const lines = [f.file + (f.provisional ? " (provisional)" : ""),
    `${utTime(f.ut)} UT · ${f.observation_id || "?"} ${f.kind || ""} ${f.object || ""}`];
  const value = m[spec.field];
  if (Number.isFinite(value)) {
    lines.push(`${spec.title}: ${fmt(value)} ${spec.unit}`.trim());
  } else {
    lines.push(`${spec.title}: undetermined`);
  }
  const verdict = m.met === true ? "met" : m.met === false ? "NOT MET" : "unknown";
  lines.push(`${spec.measure.toUpperCase()} band ${m.band || "–"}; requested ` +
    `${m.requested || "–"}: ${verdict}` +
    (Number.isFinite(m.probability) ? ` (p = ${fmt(m.probability, 2)})` : ""));
  if (spec.measure === "iq") {
    lines.push(`FWHM ${fmt(m.fwhm)}″ (zenith ${fmt(m.fwhm_zenith)}″), Strehl ` +
      `${fmt(m.strehl)}, ${m.n_stars === null || m.n_stars === undefined ? "–" : m.n_stars} stars`);
  } else if (spec.measure === "cc") {
    lines.push(`extinction ${fmt(m.extinction)} mag, zero point ${fmt(m.zeropoint)}` +
      (m.standard ? ` (standard ${m.standard})` : ""));
  } else {
    lines.push(`sky ${fmt(m.mag, 2)} mag/arcsec², ${fmt(m.rate, 2)} e-/s/pixel`);
  }
  if (m.reason) lines.push(m.reason);
  return lines.join("\n");
}

function marker(spec, f, x, y, undetermined) {
  const m = f[spec.measure] || {};
  const met = m.met === true ? "true" : m.met === false ? "false" : "null";
  const cls = ["pt", undetermined ? "undet" : met === "true" ? "met" : met === "false" ? "fail" : "none"];
  if (f.provisional) cls.push("prov");
  let node;
  if (undetermined) {
    node = svg("path", { d: `M${x} ${y - 5}L${x + 5} ${y}L${x} ${y + 5}L${x - 5} ${y}Z` });
  } else if (met === "false") {
    node = svg("path", { d: `M${x - 4.5} ${y - 4.5}L${x + 4.5} ${y + 4.5}M${x - 4.5} ` +
      `${y + 4.5}L${x + 4.5} ${y - 4.5}` });
  } else {
    node = svg("circle", { cx: x, cy: y, r: 4 });
  }
  const g = svg("g", { class: cls.join(" "), "data-frame": f.file, "data-met": met,
    "data-id": f.id });
  g.append(svg("title", {}, tooltip(spec, f)), node);
  return g;
}

function groups(frames, measure) {
  // consecutive frames with the same limits and requested band
  const out = [];
  for (const f of frames) {
    const m = f[measure] || {};
    const key = JSON.stringify([m.limits || {}, m.requested || null, m.better]);
    const last = out[out.length - 1];
    if (last && last.key === key) last.frames.push(f);
    else out.push({ key: key, frames: [f], limits: m.limits || {}, requested: m.requested,
      better: m.better || "lower" });
  }
  return out;
}

function drawPlot(spec, frames, tdom) {
  const root = svg("svg", { id: "plot-" + spec.id, class: "plot", viewBox: `0 0 ${W} ${H}`,
    role: "img", "aria-label": spec.title });
  root.append(svg("text", { x: AREA.left, y: 16, class: "title" }, spec.title +
    (spec.unit ? ` (${spec.unit})` : "") + " against UT"));
  const values = frames.map((f) => (f[spec.measure] || {})[spec.field]).filter(Number.isFinite);
  const limitSets = spec.bands ? frames.map((f) => (f[spec.measure] || {}).limits) : [];
  // the requested limits are always in view
  const requested = spec.bands ? frames.map((f) => {
    const m = f[spec.measure] || {};
    return requestedLimit(m.requested, m.limits, m.better || "lower");
  }).filter(Number.isFinite) : [];
  const [lo, hi] = yDomain(values.concat(requested), limitSets);
  const [t0, t1] = tdom || [0, 1];
  const h = AREA.bottom - AREA.top;
  const yOf = (v) => {
    const c = Math.min(hi, Math.max(lo, v));
    const r = (c - lo) / (hi - lo);
    return spec.invert ? AREA.top + r * h : AREA.bottom - r * h;
  };
  const xOf = (t) => AREA.left + (t - t0) / (t1 - t0) * (AREA.right - AREA.left);
  const plotArea = svg("g", { class: "area" });
  root.append(plotArea);
  plotArea.append(svg("rect", { x: AREA.left, y: AREA.top, width: AREA.right - AREA.left,
    height: h, class: "frame-bg" }));

  if (spec.bands && frames.length) {
    const gs = groups(frames, spec.measure);
    gs.forEach((g, k) => {
      const first = Date.parse(g.frames[0].ut), last = Date.parse(g.frames[g.frames.length - 1].ut);
      const xa = k === 0 ? AREA.left : (xOf(Date.parse(gs[k - 1].frames[gs[k - 1].frames.length - 1].ut)) + xOf(first)) / 2;
      const xb = k === gs.length - 1 ? AREA.right : (xOf(last) + xOf(Date.parse(gs[k + 1].frames[0].ut))) / 2;
      const prefix = spec.measure.toUpperCase();
      bandRanges(prefix, g.limits, g.better).forEach((b, i) => {
        const ya = yOf(b.from), yb = yOf(b.to);
        const top = Math.min(ya, yb), height = Math.abs(yb - ya);
        if (height < 0.5) return;
        const band = svg("rect", { x: xa, y: top, width: Math.max(0, xb - xa), height: height,
          class: "band band-" + (i % 2), "data-band": b.name });
        band.append(svg("title", {}, b.name));
        plotArea.append(band);
        if (k === gs.length - 1) {
          root.append(svg("text", { x: AREA.right + 4, y: top + height / 2 + 4,
            class: "band-label" }, b.name));
        }
      });
      const limit = requestedLimit(g.requested, g.limits, g.better);
      if (limit !== null) {
        const edge = g.better === "lower" ? lo : hi;  // the best end of the axis
        const ya = yOf(edge), yb = yOf(limit);
        const req = svg("rect", { x: xa, y: Math.min(ya, yb), width: Math.max(0, xb - xa),
          height: Math.abs(yb - ya), class: "requested", "data-requested": g.requested });
        req.append(svg("title", {}, "requested " + g.requested));
        plotArea.append(req);
        if (Number.isFinite(limit)) {
          plotArea.append(svg("line", { x1: xa, x2: xb, y1: yb, y2: yb, class: "requested-limit" }));
        }
        if (xb - xa > 70) {
          plotArea.append(svg("text", { x: xa + 4, y: AREA.top + 12, class: "requested-label" },
            "requested " + g.requested));
        }
      }
    });
  }

  // axes
  const yt = ticks(lo, hi, 5);
  const digits = Math.max(0, Math.min(4, -Math.floor(Math.log10(yt.step) + 1e-9)));
  for (const v of yt.values) {
    const y = yOf(v);
    root.append(svg("line", { x1: AREA.left - 4, x2: AREA.right, y1: y, y2: y, class: "grid" }));
    root.append(svg("text", { x: AREA.left - 7, y: y + 4, class: "tick y" }, v.toFixed(digits)));
  }
  if (tdom) {
    for (const t of timeTicks(t0, t1)) {
      const x = xOf(t);
      root.append(svg("line", { x1: x, x2: x, y1: AREA.top, y2: AREA.bottom + 4, class: "grid" }));
      const iso = new Date(t).toISOString();
      const midnight = iso.slice(11, 16) === "00:00" && t1 - t0 > 3600000;
      root.append(svg("text", { x: x, y: AREA.bottom + 17, class: "tick x" },
        midnight ? iso.slice(5, 10) : iso.slice(11, 16)));
    }
  }
  root.append(svg("text", { x: AREA.left - 7, y: STRIP + 4, class: "tick y" }, "n/a"));
  root.append(svg("line", { x1: AREA.left, x2: AREA.right, y1: STRIP, y2: STRIP, class: "strip" }));

  // points: every frame, on the plot or in the strip of undetermined values
  const points = svg("g", { class: "points" });
  for (const f of frames) {
    const t = Date.parse(f.ut);
    const x = Number.isFinite(t) ? xOf(t) : AREA.left;
    const v = (f[spec.measure] || {})[spec.field];
    points.append(Number.isFinite(v) ? marker(spec, f, x, yOf(v), false)
      : marker(spec, f, x, STRIP, true));
  }
  root.append(points);
  if (!frames.length) {
    root.append(svg("text", { x: (AREA.left + AREA.right) / 2, y: (AREA.top + AREA.bottom) / 2,
      class: "empty" }, "no reduced frame yet"));
  }
  return root;
}

function drawPlots(frames) {
  const tdom = timeDomain(frames);
  const box = document.getElementById("plots");
  box.replaceChildren(...PLOTS.map((spec) => el("figure", { class: "plot-box" },
    drawPlot(spec, frames, tdom))));
}

// --- tables --------------------------------------------------------------------------------
function fill(tbody, rows, columns) {
  if (!rows.length) {
    tbody.replaceChildren(el("tr", {}, el("td", { colspan: columns, class: "none" }, "none")));
    return;
  }
  tbody.replaceChildren(...rows);
}

function productList(products) {
  if (!products.length) return "–";
  const details = el("details", {}, el("summary", {}, `${products.length} product(s)`));
  const list = el("ul", {});
  for (const p of products) {
    const name = p.path + (p.provisional ? " (provisional)" : "");
    list.append(el("li", {}, p.picture ? el("a", { href: p.picture, target: "_blank",
      rel: "noopener" }, name) : name));
  }
  details.append(list);
  return details;
}

function drawSequences(seqs) {
  const rows = seqs.map((s) => {
    const why = [s.reason, s.job && s.job.error && s.state !== "DONE" ?
      `job ${s.job.id} ${s.job.recipe}: ${s.job.error}` : null].filter(Boolean).join("; ");
    return el("tr", { class: "state-" + String(s.state).toLowerCase(), "data-sequence": s.id },
      el("td", { class: "state" }, s.state + (s.quicklook ? " (quick-look)" : "")),
      el("td", {}, s.observation_id || "–"), el("td", {}, s.kind),
      el("td", { class: "object" }, s.object || "–"), el("td", {}, s.filter || "–"),
      el("td", { class: "num" }, s.exposure_time === null ? "–" : `${s.exposure_time} s`),
      el("td", { class: "num" }, s.frames), el("td", { class: "why" }, why || "–"),
      el("td", {}, productList(s.products)));
  });
  fill(document.querySelector("#sequences tbody"), rows, 9);
}

let shownPictures = "";

function drawPictures(seqs) {
  const all = seqs.flatMap((s) => s.products.map((p) => ({ ...p, sequence: s })))
    .filter((p) => p.picture);
  const flats = all.filter((p) => p.kind === "processed_flat");
  const stacks = all.filter((p) => p.kind === "stack");
  const frames = all.filter((p) => p.kind.endsWith("sky_corrected"))
    .sort((a, b) => b.id - a.id).slice(0, 6);
  const chosen = [...flats, ...stacks, ...frames];
  const key = JSON.stringify(chosen.map((p) => p.picture));
  if (key === shownPictures) return;  // unchanged: keep the images loaded
  shownPictures = key;
  const box = document.getElementById("pictures");
  if (!chosen.length) {
    box.replaceChildren(el("p", { class: "none" }, "no picture yet"));
    return;
  }
  box.replaceChildren(...chosen.map((p) => el("figure", { class: "picture" },
    el("a", { href: p.picture, target: "_blank", rel: "noopener" },
      el("img", { src: p.picture, alt: p.file, loading: "lazy", width: 260, height: 260 })),
    el("figcaption", {}, p.file + (p.provisional ? " (provisional)" : "")))));
}

function drawProblems(files) {
  fill(document.querySelector("#problem-files tbody"), files.frames.map((f) =>
    el("tr", {}, el("td", { class: "file" }, f.file), el("td", {}, f.state),
      el("td", { class: "why" }, f.reason || "–"), el("td", {}, utTime(f.updated)))), 4);
  const rows = files.jobs.map((j) => el("tr", {}, el("td", { class: "num" }, j.id),
    el("td", {}, j.recipe), el("td", {}, j.sequence || "–"), el("td", {}, j.state),
    el("td", { class: "why" }, j.error || "–")));
  for (const s of files.sequences) {
    rows.push(el("tr", {}, el("td", {}, "–"), el("td", {}, "–"), el("td", {}, s.label),
      el("td", {}, "FAILED"), el("td", { class: "why" }, s.reason || "–")));
  }
  fill(document.querySelector("#problem-jobs tbody"), rows, 5);
}

function drawStatus(status, frames) {
  const d = status.daemon;
  const c = status.counts;
  const text = `${d.running ? "Daemon running" : "Daemon not running"} (${d.reason})` +
    (d.note ? ` — ${d.note}` : "") + `. ${frames.length} reduced frame(s), ${c.sequences} ` +
    `sequence(s), ${c.problems} problem file(s). Updated ${utTime(status.now)} UT.`;
  const p = document.getElementById("status");
  p.textContent = text;
  p.className = "status" + (d.running ? "" : " stale");
}

// --- refresh loop --------------------------------------------------------------------------
async function getJSON(url) {
  const response = await fetch(url, { cache: "no-store", headers: { Accept: "application/json" } });
  if (!response.ok) {
    let why = response.statusText;
    try { why = (await response.json()).error || why; } catch (e) { /* not JSON */ }
    throw new Error(`${url}: ${response.status} ${why}`);
  }
  return response.json();
}

let updates = 0;

async function refresh() {
  try {
    const [status, frames, seqs, files] = await Promise.all([getJSON("/api/status"),
      getJSON("/api/frames"), getJSON("/api/sequences"), getJSON("/api/files")]);
    drawPlots(frames);
    drawSequences(seqs);
    drawPictures(seqs);
    drawProblems(files);
    drawStatus(status, frames);
    updates += 1;
    document.body.dataset.updates = String(updates);
  } catch (err) {
    const p = document.getElementById("status");
    p.textContent = `Cannot update (${err.message}); showing the last data, trying again.`;
    p.className = "status stale";
  } finally {
    setTimeout(refresh, REFRESH_MS);
  }
}

document.addEventListener("DOMContentLoaded", refresh);
