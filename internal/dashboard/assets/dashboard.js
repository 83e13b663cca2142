// The moegrid dashboard: polls state.json and renders it. Rates (tokens/s,
// the heat map's recent routing) come from the difference between two polls
// of the cumulative counters the state carries.
"use strict";

const pollMillis = 1500;
const sparkPoints = 60;

let previous = null;      // the last state and when it was read
const rates = [];         // recent tokens/s, oldest first

function el(tag, attrs, text) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}

function bytes(n) {
  if (!n) return "0 B";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return (i === 0 ? n.toFixed(0) : n.toFixed(1)) + " " + units[i];
}

function seconds(s) {
  if (s === null || s === undefined) return "–";
  if (s < 1e-3) return (s * 1e6).toFixed(0) + " µs";
  if (s < 1) return (s * 1e3).toFixed(1) + " ms";
  return s.toFixed(2) + " s";
}

function fillBar(bar, used, total) {
  const share = total > 0 ? Math.min(used / total, 1) : 0;
  bar.style.width = (share * 100).toFixed(1) + "%";
  bar.classList.toggle("high", share >= 0.8 && share < 0.95);
  bar.classList.toggle("full", share >= 0.95);
}

function renderSummary(st, now) {
  document.getElementById("model").textContent = st.model + " · " + st.experts + " experts × " + st.layers + " layers";
  document.getElementById("placement").textContent = "placement v" + st.placement_version;
  if (previous) {
    const dt = (now - previous.at) / 1000;
    if (dt > 0) {
      rates.push(Math.max(st.generated_tokens_total - previous.state.generated_tokens_total, 0) / dt);
      if (rates.length > sparkPoints) rates.shift();
    }
  }
  const rate = rates.length ? rates[rates.length - 1] : 0;
  document.getElementById("tokens-per-second").textContent = rate.toFixed(1);
  const top = Math.max(...rates, 1);
  const points = rates.map((r, i) => (i * 120 / (sparkPoints - 1)).toFixed(1) + "," + (29 - 28 * r / top).toFixed(1));
  document.querySelector("#sparkline polyline").setAttribute("points", points.join(" "));
  document.getElementById("tokens-total").textContent = st.generated_tokens_total;
  document.getElementById("batch").textContent = st.running + " / " + st.waiting;
  document.getElementById("kv").textContent = bytes(st.kv_used_bytes) + " of " + bytes(st.kv_budget_bytes);
  fillBar(document.getElementById("kv-bar"), st.kv_used_bytes, st.kv_budget_bytes);
  for (const [name, p] of [["ttft", st.latency.ttft], ["tbt", st.latency.tbt]]) {
    const row = document.getElementById("latency-" + name);
    row.querySelector(".p50").textContent = seconds(p.p50);
    row.querySelector(".p90").textContent = seconds(p.p90);
    row.querySelector(".p99").textContent = seconds(p.p99);
    row.querySelector(".n").textContent = p.count;
  }
  const w = st.latency.window_seconds;
  document.getElementById("latency-window").textContent =
    w > 0 ? "percentiles over the last " + w.toFixed(0) + " s" : "percentiles since the router started";
}

function renderNodes(st) {
  const box = document.getElementById("nodes");
  const cards = [];
  for (const n of st.nodes) {
    const card = el("div", { class: "node health-" + n.health, "data-node-id": n.id, "data-health": n.health });
    const head = el("div");
    head.append(el("span", { class: "id" }, n.id), " ", el("span", { class: "meta" }, n.health));
    card.append(head, el("div", { class: "meta" }, (n.addr || "no address") + (n.device ? " · " + n.device : "")));
    const shards = el("div", { class: "shards" });
    for (const s of n.shards) {
      const whole = s.first_layer === 0 && s.end_layer === st.layers;
      const label = "E" + s.expert + (whole ? "" : " L" + s.first_layer + "–" + (s.end_layer - 1));
      const cls = "shard" + (s.loaded ? "" : " loading") + (s.assigned ? "" : " unassigned");
      const title = (s.loaded ? "loaded" : "loading") + (s.assigned ? "" : ", no longer assigned");
      shards.append(el("span", { class: cls, "data-expert": s.expert, title: title }, label));
    }
    card.append(shards);
    card.append(el("div", { class: "meta" }, "memory " + bytes(n.used_bytes) + " of " + bytes(n.capacity_bytes) +
      " · " + n.rows_per_second.toFixed(0) + " rows/s"));
    const bar = el("div", { class: "bar" });
    const fill = el("div", { class: "fill" });
    bar.append(fill);
    fillBar(fill, n.used_bytes, n.capacity_bytes);
    card.append(bar);
    cards.push(card);
  }
  if (!cards.length) cards.push(el("p", { class: "muted" }, "no expert nodes registered"));
  box.replaceChildren(...cards);
}

// renderHeatmap colours each cell by its expert's share of the layer's rows
// since the last poll, or, when nothing was routed since, of all rows.
function renderHeatmap(st) {
  const table = document.getElementById("heatmap");
  const head = el("tr");
  head.append(el("th", {}, "layer"));
  for (let e = 0; e < st.experts; e++) {
    const replicas = st.replicas[e];
    head.append(el("th", { class: "replicas-" + Math.min(replicas, 1), title: replicas + " usable replicas" }, "E" + e));
  }
  table.tHead.replaceChildren(head);
  const before = previous ? previous.state.routed : null;
  const rows = [];
  st.routed.forEach((counts, l) => {
    let recent = counts.map((c, e) => (before && before[l] ? c - before[l][e] : 0));
    if (recent.every((c) => c <= 0)) recent = counts;
    const total = recent.reduce((a, b) => a + b, 0);
    const tr = el("tr");
    tr.append(el("th", {}, l));
    counts.forEach((c, e) => {
      const share = total > 0 ? recent[e] / total : 0;
      const td = el("td", {
        class: "cell", "data-layer": l, "data-expert": e, "data-rows": c,
        "data-share": share.toFixed(4), title: "layer " + l + ", expert " + e + ": " + c + " rows",
      }, total > 0 ? (share * 100).toFixed(0) : "");
      // An even split over the experts sits in the middle of the scale.
      const heat = Math.min(share * st.experts / 2, 1);
      td.style.background = "hsl(" + (220 - 200 * heat).toFixed(0) + ", 70%, " + (18 + 32 * heat).toFixed(0) + "%)";
      tr.append(td);
    });
    rows.push(tr);
  });
  table.tBodies[0].replaceChildren(...rows);
}

async function poll() {
  const status = document.getElementById("status");
  try {
    const resp = await fetch("state.json", { cache: "no-store" });
    if (!resp.ok) throw new Error("state.json: HTTP " + resp.status);
    const st = await resp.json();
    const now = Date.now();
    renderSummary(st, now);
    renderNodes(st);
    renderHeatmap(st);
    previous = { state: st, at: now };
    status.textContent = "live · " + new Date(st.time).toLocaleTimeString();
    status.className = "status live";
  } catch (err) {
    status.textContent = String(err.message || err);
    status.className = "status error";
  }
  setTimeout(poll, pollMillis);
}

poll();
