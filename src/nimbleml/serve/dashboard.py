"""/dashboard: one self-contained page (no CDN) that polls /dashboard/data every second."""

from __future__ import annotations

from typing import Any

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>nimbleml serve</title>
<style>
 body { font: 14px system-ui, sans-serif; margin: 24px; color: #222; }
 table { border-collapse: collapse; margin-top: 12px; }
 th, td { padding: 6px 12px; border-bottom: 1px solid #ddd; text-align: right; }
 th:first-child, td:first-child { text-align: left; }
 .healthy { color: #2a7; } .degraded { color: #c80; } .failing { color: #c33; }
 #updated { color: #888; font-size: 12px; }
 svg { vertical-align: middle; }
</style></head>
<body>
<h1>nimbleml serve</h1>
<div id="updated">waiting for data…</div>
<table id="models"><thead><tr>
 <th>model</th><th>health</th><th>requests</th><th>req/s</th><th>p50 ms</th><th>p95 ms</th>
 <th>p99 ms</th><th>n</th><th>p99 trend</th><th>batches (idle/full/window)</th><th>mean batch</th>
 <th>queue</th><th>shed</th><th>cache hits</th><th>accuracy</th><th>alerts</th>
</tr></thead><tbody></tbody></table>
<script>
window.__loadedAt = Date.now();
const history = {};
let previous = null;
function fmt(v, d) { return v === null || v === undefined ? "–" : Number(v).toFixed(d); }
function spark(values) {
  if (values.length < 2) return "";
  const max = Math.max(...values), min = Math.min(...values), w = 120, h = 24;
  const pts = values.map((v, i) => `${(i / (values.length - 1)) * w},${h - ((v - min) / ((max - min) || 1)) * h}`);
  return `<svg width="${w}" height="${h}"><polyline fill="none" stroke="#4c72b0" points="${pts.join(" ")}"/></svg>`;
}
async function refresh() {
  try {
    const r = await fetch("/dashboard/data", {cache: "no-store"});
    const data = await r.json();
    const rows = [];
    for (const m of data.models) {
      const h = history[m.name] = (history[m.name] || []).concat([m.latency.p99_ms || 0]).slice(-60);
      let rate = null;
      if (previous && previous[m.name] !== undefined) {
        rate = (m.requests - previous[m.name].requests) / ((data.time - previous.time) || 1);
      }
      const b = m.batches;
      rows.push(`<tr id="row-${m.name}"><td>${m.name}</td>
        <td id="status-${m.name}" class="${m.health.status}" title="${m.health.reasons.join("; ")}">${m.health.status}</td>
        <td id="requests-${m.name}">${m.requests}</td><td>${fmt(rate, 1)}</td>
        <td>${fmt(m.latency.p50_ms, 3)}</td><td>${fmt(m.latency.p95_ms, 3)}</td><td>${fmt(m.latency.p99_ms, 3)}</td>
        <td>${m.latency.n}</td><td>${spark(h)}</td>
        <td>${b.idle}/${b.full}/${b.window}</td><td>${fmt(m.mean_batch, 2)}</td>
        <td>${m.queue}</td><td>${m.shed}</td><td>${m.cache_hits}</td>
        <td>${fmt(m.accuracy, 3)}</td><td>${m.alerts.join(", ") || "none"}</td></tr>`);
    }
    document.querySelector("#models tbody").innerHTML = rows.join("");
    previous = {time: data.time};
    for (const m of data.models) previous[m.name] = {requests: m.requests};
    document.getElementById("updated").textContent = "updated " + new Date(data.time * 1000).toLocaleTimeString();
  } catch (e) {
    document.getElementById("updated").textContent = "no data: " + e;
  }
}
refresh();
setInterval(refresh, 1000);
</script>
</body></html>
"""


def dashboard_data(entries: dict[str, Any], monitor: Any) -> dict[str, Any]:
    import time

    monitor.flush()
    models = []
    for name, entry in sorted(entries.items()):
        stats = entry.batcher.stats
        batches = sum(stats.batches.values())
        hits = 0
        if entry.cache is not None:
            hits = sum(t["hits"] for t in entry.cache.info()["tiers"].values())
        models.append(
            {
                "name": name,
                "health": monitor.health(name),
                "requests": monitor.counts(name)["requests"],
                "latency": monitor.latency(name),
                "batches": stats.batches,
                "mean_batch": stats.samples / batches if batches else None,
                "queue": entry.batcher.queued_samples,
                "shed": stats.shed,
                "cache_hits": hits,
                "accuracy": monitor.accuracy(name).get("accuracy"),
                "alerts": [rule.name for rule, _, _ in monitor.engine.active(name)],
            }
        )
    return {"time": time.time(), "models": models}
