"""The /dashboard page: HTML, CSS and a small inline script that polls /dashboard/data and
draws every chart as SVG itself (no CDN, no library: the page works offline and behind a
firewall). The first poll gets the last 15 minutes; later ones ask only for newer rows."""

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>nimbleml serve</title>
<link rel="icon" href="data:,">
<style>
 body { font: 13px system-ui, sans-serif; margin: 20px; color: #222; background: #fff; }
 h1 { font-size: 20px; margin: 0 0 4px; } h2 { font-size: 16px; margin: 22px 0 6px; }
 table { border-collapse: collapse; margin-top: 6px; }
 th, td { padding: 4px 10px; border-bottom: 1px solid #ddd; text-align: right; }
 th:first-child, td:first-child { text-align: left; }
 .healthy { color: #2a7; } .degraded { color: #c80; } .failing { color: #c33; }
 .firing { color: #c33; } .resolved { color: #2a7; } .muted, #updated { color: #888; }
 .grid { display: flex; flex-wrap: wrap; gap: 8px 14px; }
 figure { margin: 0; width: 440px; }
 figcaption { min-height: 34px; } figcaption b { margin-right: 6px; }
 .key { white-space: nowrap; margin-right: 8px; color: #444; }
 .key i { display: inline-block; width: 10px; height: 3px; margin: 0 4px 3px 0; }
 .few { color: #c80; }
 svg text { font: 10px system-ui, sans-serif; fill: #444; }
 svg text.title { font-size: 11px; fill: #222; }
 svg .grid-line { stroke: #eee; } svg .axis { stroke: #999; }
 svg path { fill: none; stroke-width: 1.6; stroke-linecap: round; stroke-linejoin: round; }
</style></head>
<body>
<h1>nimbleml serve</h1>
<div id="updated">waiting for data…</div>
<table id="summary"><thead><tr>
 <th>model</th><th>health</th><th>requests</th><th>server errors</th><th>shed (503)</th>
 <th>queue</th><th>p50 / p95 / p99 ms, 15 min</th><th>n</th><th>accuracy</th><th>alerts</th>
</tr></thead><tbody></tbody></table>
<h2>Alerts</h2><div id="alerts" class="muted">none</div>
<h2>Process</h2>
<div class="grid"><figure id="chart-http"></figure><figure id="chart-cpu"></figure>
<figure id="chart-memory"></figure></div>
<div id="models"></div>
<script>
"use strict";
window.__loadedAt = Date.now();
const W = 440, H = 200, PAD = {left: 58, right: 12, top: 8, bottom: 40};
const COLORS = ["#4c72b0", "#dd8452", "#c44e52", "#55a868", "#8172b3", "#937860"];
const CHARTS = ["latency", "traffic", "queue", "queue-time", "dispatch", "batch-sizes",
                "cache", "accuracy"];
let windowS = 900, latest = null, processSeries = null;
const models = {};  // name -> the model's latest JSON, its series merged over polls

const esc = s => String(s).replace(/[&<>"']/g, c => "&#" + c.charCodeAt(0) + ";");
const num = v => v === null || v === undefined ? "–" : String(+Number(v).toPrecision(3));
const clock = t => new Date(t * 1000).toTimeString().slice(0, 8);
const lastValue = values => { for (let i = values.length - 1; i >= 0; i--) if (values[i] !== null) return values[i]; return null; };

// y ticks from 0 in steps of 1, 2 or 5 times a power of ten, about four of them
function yTicks(max) {
  if (!(max > 0)) max = 1;
  const raw = max / 4, power = Math.pow(10, Math.floor(Math.log10(raw)));
  const step = [1, 2, 5, 10].map(f => f * power).find(s => s >= raw);
  const n = Math.max(1, Math.ceil(max / step - 1e-9));
  return Array.from({length: n + 1}, (_, i) => +(i * step).toPrecision(12));
}
function short(v) {
  if (Math.abs(v) >= 1e6) return +(v / 1e6).toPrecision(3) + "M";
  if (Math.abs(v) >= 1e3) return +(v / 1e3).toPrecision(3) + "k";
  return String(+v.toPrecision(3));
}

// gridlines, tick labels and both axis titles; xs and ys are [position, label] pairs
function frame(xs, ys, xTitle, yTitle, xGrid) {
  const right = W - PAD.right, bottom = H - PAD.bottom;
  let svg = "";
  for (const [y, label] of ys) {
    svg += `<line class="grid-line" x1="${PAD.left}" x2="${right}" y1="${y}" y2="${y}"/>` +
           `<text class="tick" x="${PAD.left - 5}" y="${y + 3}" text-anchor="end">${label}</text>`;
  }
  for (const [x, label] of xs) {
    if (xGrid) svg += `<line class="grid-line" x1="${x}" x2="${x}" y1="${PAD.top}" y2="${bottom}"/>`;
    svg += `<text class="tick" x="${x}" y="${bottom + 13}" text-anchor="middle">${esc(label)}</text>`;
  }
  svg += `<line class="axis" x1="${PAD.left}" x2="${right}" y1="${bottom}" y2="${bottom}"/>` +
         `<line class="axis" x1="${PAD.left}" x2="${PAD.left}" y1="${PAD.top}" y2="${bottom}"/>` +
         `<text class="title" x="${(PAD.left + right) / 2}" y="${H - 6}" text-anchor="middle">${esc(xTitle)}</text>` +
         `<text class="title" transform="translate(13 ${(PAD.top + bottom) / 2}) rotate(-90)" text-anchor="middle">${esc(yTitle)}</text>`;
  return svg;
}

// powers of ten around the positive values, at least one decade apart
function logTicks(values) {
  const positive = values.filter(v => v > 0);
  let low = Math.floor(Math.log10(positive.length ? Math.min(...positive) : 0.01));
  let high = Math.ceil(Math.log10(positive.length ? Math.max(...positive) : 1));
  if (high <= low) high = low + 1;
  return Array.from({length: high - low + 1}, (_, i) => +Math.pow(10, low + i).toPrecision(1));
}

// a y scale: linear from 0 (to opts.max when given), or logarithmic (opts.log)
function yScale(values, opts) {
  const bottom = H - PAD.bottom, span = bottom - PAD.top;
  if (opts.log) {
    const ticks = logTicks(values), low = Math.log10(ticks[0]), high = Math.log10(ticks[ticks.length - 1]);
    return {ticks, y: v => v > 0 ? bottom - (Math.log10(v) - low) / (high - low) * span : null};
  }
  const ticks = yTicks(opts.max || Math.max(0, ...values)), top = ticks[ticks.length - 1];
  return {ticks, y: v => bottom - Math.min(v, top) / top * span};
}

// one line per series against time over the window; null leaves a gap
function timeChart(t, now, series, yTitle, opts) {
  const x0 = now - windowS, right = W - PAD.right;
  const x = v => PAD.left + (v - x0) / windowS * (right - PAD.left);
  const shown = [];
  for (const s of series) s.values.forEach((v, i) => { if (v !== null && t[i] >= x0) shown.push(v); });
  const {ticks: ys, y} = yScale(shown, opts);
  const xs = [];
  for (let s = Math.ceil(x0 / 180) * 180; s <= now; s += 180) xs.push([x(s).toFixed(1), clock(s).slice(0, 5)]);
  let svg = frame(xs, ys.map(v => [y(v).toFixed(1), short(v)]), `time (local clock, last ${windowS / 60} min)`, yTitle, true);
  for (const s of series) {
    let d = "", open = false;
    t.forEach((ti, i) => {
      const v = s.values[i];
      if (v === null || v === undefined || ti < x0 || y(v) === null) { open = false; return; }
      d += (open ? "L" : "M") + x(ti).toFixed(1) + "," + y(v).toFixed(1) + (open ? "" : "h0.01");
      open = true;
    });
    svg += `<path d="${d}" stroke="${s.color}"${s.dashed ? ' stroke-dasharray="4 3"' : ""}/>`;
  }
  return svg;
}

function barChart(labels, values, xTitle, yTitle) {
  const right = W - PAD.right, bottom = H - PAD.bottom, slot = (right - PAD.left) / labels.length;
  const ys = yTicks(Math.max(0, ...values)), top = ys[ys.length - 1];
  const y = v => bottom - v / top * (bottom - PAD.top);
  let bars = "";
  labels.forEach((label, i) => {
    bars += `<rect x="${(PAD.left + (i + 0.15) * slot).toFixed(1)}" y="${y(values[i]).toFixed(1)}" ` +
            `width="${(0.7 * slot).toFixed(1)}" height="${(bottom - y(values[i])).toFixed(1)}" fill="${COLORS[0]}">` +
            `<title>${esc(label)}: ${values[i]} batches</title></rect>`;
  });
  const xs = labels.map((label, i) => [(PAD.left + (i + 0.5) * slot).toFixed(1), label]);
  return frame(xs, ys.map(v => [y(v).toFixed(1), short(v)]), xTitle, yTitle, false) + bars;
}

function draw(id, title, keys, svg) {
  const el = document.getElementById(id);
  if (el) el.innerHTML = `<figcaption><b>${esc(title)}</b>${keys}</figcaption>` +
    `<svg width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" role="img" aria-label="${esc(title)}">${svg}</svg>`;
}

// series from column names: [[label, column, unit], ...]; the legend shows the latest value
function lines(columns, spec) {
  return spec.map(([label, column, unit, extra], i) => Object.assign(
    {label, unit, values: columns[column] || [], color: COLORS[i % COLORS.length]}, extra || {}));
}
function keys(series) {
  return series.map(s => `<span class="key"><i style="background:${s.color}"></i>${esc(s.label)} ` +
    `${num(lastValue(s.values))}${esc(s.unit)}${s.note ? ` <span class="few">${esc(s.note)}</span>` : ""}</span>`).join("");
}
function timeFigure(id, title, columns, now, spec, yTitle, opts = {}) {
  const series = lines(columns, spec);
  draw(id, title, keys(series), timeChart(columns.t, now, series, yTitle, opts));
}

function drawModel(m, data) {
  const s = m.series, now = data.time, id = c => `chart-${c}-${m.name}`;
  const n = lastValue(s.latency_n || []) || 0, need = data.min_samples;
  const pct = q => ({dashed: n < need[q], note: n < need[q] ? `n=${n}<${need[q]}` : ""});
  timeFigure(id("latency"), `Latency (trailing ${data.latency_window_s} s, n=${n})`, s, now,
    [["p50", "p50_ms", " ms", pct("p50")], ["p95", "p95_ms", " ms", pct("p95")],
     ["p99", "p99_ms", " ms", pct("p99")]], "latency, ms (log scale)", {log: true});
  timeFigure(id("traffic"), "Requests by status", s, now,
    [["ok", "ok", "/s"], ["server error", "server_error", "/s"], ["shed (503)", "shed", "/s"]],
    "requests/s");
  timeFigure(id("queue"), "Queue depth", s, now, [["queued", "queue_samples", ""]], "queued, samples");
  timeFigure(id("queue-time"), "Queue time (mean per request)", s, now,
    [["waited", "queue_ms", " ms"]], "queue wait, ms");
  timeFigure(id("dispatch"), "Batches by why they were sent", s, now,
    [["idle", "dispatch_idle", "/s"], ["full", "dispatch_full", "/s"], ["window", "dispatch_window", "/s"]],
    "batches/s");
  const sizes = m.batch_buckets.map(b => (s[b.column] || []).reduce((a, v) => a + (v || 0), 0));
  draw(id("batch-sizes"), `Batch sizes, last ${windowS / 60} min`,
    `<span class="key">${sizes.reduce((a, v) => a + v, 0)} batches</span>`,
    barChart(m.batch_buckets.map(b => b.label), sizes, "batch size, samples", "batches"));
  if (m.cache_tiers.length) {
    timeFigure(id("cache"), "Cache hit rate by tier", s, now,
      m.cache_tiers.map(tier => [tier, "hit_" + tier, " %"]), "hits, % of lookups", {max: 100});
  } else {
    draw(id("cache"), "Cache hit rate by tier", '<span class="key">no cache (--cache-mb 0)</span>', "");
  }
  const recent = `predictions of the last ${data.accuracy_window_s} s`;
  if (m.quality === "mae") {
    timeFigure(id("accuracy"), `MAE against ground truth, ${recent}`, s, now,
      [["MAE", "quality", ""], ["labelled", "coverage", " %", {dashed: true}]], "MAE (output units) / labelled, %");
  } else {
    timeFigure(id("accuracy"), `Accuracy against ground truth, ${recent}`, s, now,
      [["accuracy", "quality", " %"], ["labelled", "coverage", " %"]], "% of predictions", {max: 100});
  }
}

function drawProcess(data) {
  const p = processSeries, now = data.time;
  timeFigure("chart-http", "HTTP responses by status (all routes, this page too)", p, now,
    [["ok", "http_ok", "/s"], ["client error", "http_client_error", "/s"],
     ["server error", "http_server_error", "/s"], ["shed (503)", "http_shed", "/s"]], "responses/s");
  timeFigure("chart-cpu", "CPU of the server process", p, now, [["CPU", "cpu_percent", " %"]], "CPU, % of one core");
  timeFigure("chart-memory", "Memory of the server process", p, now, [["resident", "rss_mb", " MiB"]], "resident memory, MiB");
}

function section(m) {
  if (document.getElementById("model-" + m.name)) return;
  const el = document.createElement("section");
  el.id = "model-" + m.name;
  el.innerHTML = `<h2>Model ${esc(m.name)}</h2><div class="grid">` +
    CHARTS.map(c => `<figure id="chart-${esc(c)}-${esc(m.name)}"></figure>`).join("") + "</div>";
  document.getElementById("models").appendChild(el);
}

function drawTables(data) {
  const rows = [], active = [];
  for (const m of data.models) {
    const l = m.latency;
    const quality = lastValue(m.series.quality || []);
    rows.push(`<tr><td>${esc(m.name)}</td>` +
      `<td id="status-${esc(m.name)}" class="${m.health.status}" title="${esc(m.health.reasons.join("; "))}">${m.health.status}</td>` +
      `<td id="requests-${esc(m.name)}">${m.requests}</td><td>${m.errors}</td><td>${m.shed}</td><td>${m.queue}</td>` +
      `<td>${num(l.p50_ms)} / ${num(l.p95_ms)} / ${num(l.p99_ms)}</td><td>${l.n}</td>` +
      `<td>${num(quality)}${m.quality === "mae" ? "" : " %"}</td><td>${m.alerts.length}</td></tr>`);
    for (const a of m.alerts) active.push(`<li class="firing">${esc(m.name)}: <b>${esc(a.name)}</b> (${esc(a.severity)}) ` +
      `${esc(a.metric)} ${num(a.value)} ${esc(a.op)} ${num(a.threshold)}, firing since ${clock(a.since)}</li>`);
  }
  document.querySelector("#summary tbody").innerHTML = rows.join("");
  const events = data.alerts.map(e => `<tr><td>${clock(e.at)}</td><td>${esc(e.model)}</td><td>${esc(e.rule)}</td>` +
    `<td>${esc(e.severity)}</td><td class="${esc(e.state)}">${esc(e.state)}</td><td>${num(e.value)}</td><td>${num(e.threshold)}</td></tr>`);
  document.getElementById("alerts").innerHTML =
    (active.length ? `<ul>${active.join("")}</ul>` : "no alert is firing") +
    (events.length ? "<table><thead><tr><th>when</th><th>model</th><th>rule</th><th>severity</th><th>state</th>" +
      `<th>value</th><th>threshold</th></tr></thead><tbody>${events.join("")}</tbody></table>` :
      `; none fired or resolved in the last ${windowS / 60} min`);
}

// the new rows of a poll appended to what the page holds, rows older than the window dropped
function merge(old, fresh, x0) {
  if (!old) return fresh;
  const first = old.t.findIndex(t => t >= x0), keep = first < 0 ? old.t.length : first;
  const out = {}, gap = rows => rows.t.map(() => null);
  for (const k of new Set([...Object.keys(old), ...Object.keys(fresh)])) {
    out[k] = (old[k] || gap(old)).slice(keep).concat(fresh[k] || gap(fresh));
  }
  return out;
}

async function refresh() {
  try {
    // location.origin, not a relative URL: a page opened as http://user:key@host/ would
    // resolve one with the credentials in it, which fetch refuses
    const url = location.origin + "/dashboard/data" + (latest === null ? "" : "?since=" + latest);
    const r = await fetch(url, {cache: "no-store", credentials: "same-origin"});
    if (!r.ok) throw new Error("HTTP " + r.status);
    const data = await r.json();
    windowS = data.window_s;
    const x0 = data.time - windowS;
    processSeries = merge(processSeries, data.process, x0);
    for (const name of Object.keys(models)) {
      if (!data.models.some(m => m.name === name)) {  // no longer served
        delete models[name];
        document.getElementById("model-" + name)?.remove();
      }
    }
    for (const m of data.models) {
      m.series = merge(models[m.name] && models[m.name].series, m.series, x0);
      models[m.name] = m;
      section(m);
      drawModel(m, data);
    }
    if (data.latest !== null) latest = data.latest;
    drawProcess(data);
    drawTables(data);
    document.getElementById("updated").textContent = "updated " + clock(data.time) +
      `; a row every ${data.interval_s} s, ${processSeries.t.length} rows held`;
  } catch (e) {
    document.getElementById("updated").textContent = "no data: " + e;
  }
}
async function poll() {  // one request at a time: the next waits for this one
  await refresh();
  setTimeout(poll, 1000);
}
poll();
</script>
</body></html>
"""
