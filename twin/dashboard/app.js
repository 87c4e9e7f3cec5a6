// factory-twin dashboard: plain JavaScript, no build step, no CDN. Live through /stream.
"use strict";
const machines = new Map();   // machine -> twin
const trends = new Map();     // machine -> recent risk probabilities
const alerts = new Map();     // id -> alert (active ones)
let selected = null;

const $ = (selector) => document.querySelector(selector);
const pct = (p) => (p * 100).toFixed(1) + "%";
const time = (ms) => new Date(ms).toLocaleTimeString();
const cell = (text, cls) => { const td = document.createElement("td"); td.textContent = text; if (cls) td.className = cls; return td; };

function tokenHeaders() {
  const token = $("#token").value || localStorage.getItem("twin-token") || "";
  return token ? { Authorization: "Bearer " + token } : {};
}

function trendSvg(values) {
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("class", "trend");
  svg.setAttribute("viewBox", "0 0 80 18");
  const points = values.map((v, i) => `${(i / Math.max(values.length - 1, 1)) * 80},${18 - v * 18}`);
  const line = document.createElementNS("http://www.w3.org/2000/svg", "polyline");
  line.setAttribute("points", points.join(" "));
  line.setAttribute("fill", "none");
  line.setAttribute("stroke", "#e53935");
  svg.appendChild(line);
  return svg;
}

function renderFleet() {
  const body = $("#fleet tbody");
  body.replaceChildren();
  const sorted = [...machines.values()].sort((a, b) => (a.site + a.machine).localeCompare(b.site + b.machine));
  for (const twin of sorted) {
    const tr = document.createElement("tr");
    tr.dataset.machine = twin.machine;
    const risk = twin.risk ? twin.risk.probability : null;
    tr.append(cell(twin.site), cell(twin.machine), cell(twin.type || "?"),
      cell(twin.online === false ? "offline" : twin.online ? "online" : "?", twin.online === false ? "off" : ""));
    const riskTd = cell(risk === null ? (twin.risk_reason || "-") : pct(risk));
    if (risk !== null) { const bar = document.createElement("span"); bar.className = "bar"; bar.style.width = (risk * 60) + "px"; riskTd.prepend(bar, " "); }
    const trendTd = document.createElement("td");
    trendTd.appendChild(trendSvg(trends.get(twin.machine) || []));
    const count = [...alerts.values()].filter((a) => a.machine === twin.machine).length;
    tr.append(riskTd, trendTd, cell(count ? String(count) : "", count ? "sev-major" : ""));
    tr.onclick = () => select(twin.machine);
    body.appendChild(tr);
  }
}

function renderAlerts() {
  const body = $("#alerts tbody");
  body.replaceChildren();
  for (const alert of [...alerts.values()].sort((a, b) => b.raised_at - a.raised_at)) {
    const tr = document.createElement("tr");
    tr.dataset.alertId = alert.id;
    tr.append(cell(time(alert.raised_at)), cell(alert.severity, "sev-" + alert.severity), cell(alert.machine), cell(alert.message));
    const td = document.createElement("td");
    if (alert.acknowledged) {
      td.textContent = "by " + (alert.acknowledged_by || "?");
    } else {
      const button = document.createElement("button");
      button.textContent = "acknowledge";
      button.onclick = () => acknowledge(alert.id);
      td.appendChild(button);
    }
    tr.appendChild(td);
    body.appendChild(tr);
  }
}

async function acknowledge(id) {
  const response = await fetch(`/alerts/${id}/ack`, {
    method: "POST",
    headers: { "Content-Type": "application/json", ...tokenHeaders() },
    body: JSON.stringify({ by: "dashboard" }),
  });
  if (!response.ok) { alert((await response.json()).detail); return; }
  const updated = await response.json();
  if (updated.state === "active") alerts.set(updated.id, updated);
  renderAlerts();
}

async function select(machine) {
  selected = machine;
  $("#detail").hidden = false;
  $("#detail-name").textContent = machine;
  renderDetail();
  const history = await (await fetch(`/alerts?machine=${encodeURIComponent(machine)}&limit=20`)).json();
  const body = $("#history tbody");
  body.replaceChildren(...history.items.map((a) => {
    const tr = document.createElement("tr");
    tr.append(cell(time(a.raised_at)), cell(a.severity, "sev-" + a.severity), cell(a.state), cell(a.message));
    return tr;
  }));
}

function renderDetail() {
  const twin = machines.get(selected);
  if (!twin) return;
  $("#signals tbody").replaceChildren(...Object.entries(twin.values).map(([name, v]) => {
    const tr = document.createElement("tr");
    tr.append(cell(name), cell(String(v.value)), cell(time(v.ts)));
    return tr;
  }));
  const contributions = twin.risk ? Object.entries(twin.risk.contributions) : [];
  $("#contributions tbody").replaceChildren(...contributions.slice(0, 8).map(([name, value]) => {
    const tr = document.createElement("tr");
    tr.append(cell(name), cell((value > 0 ? "+" : "") + value.toFixed(2)));
    return tr;
  }));
}

function upsertTwin(twin) {
  machines.set(twin.machine, twin);
  if (twin.risk) {
    const series = trends.get(twin.machine) || [];
    series.push(twin.risk.probability);
    trends.set(twin.machine, series.slice(-30));
  }
}

async function start() {
  $("#token").value = localStorage.getItem("twin-token") || "";
  $("#token").onchange = () => localStorage.setItem("twin-token", $("#token").value);
  const fleet = await (await fetch("/machines?limit=1000")).json();
  fleet.items.forEach(upsertTwin);
  const active = await (await fetch("/alerts?state=active&limit=1000")).json();
  active.items.forEach((a) => alerts.set(a.id, a));
  renderFleet();
  renderAlerts();
  const stream = new EventSource("/stream");
  stream.onopen = () => { $("#live").className = "dot on"; $("#live").textContent = "live"; };
  stream.onerror = () => { $("#live").className = "dot"; $("#live").textContent = "reconnecting"; };
  stream.addEventListener("twin", (event) => {
    upsertTwin(JSON.parse(event.data));
    renderFleet();
    if (selected) renderDetail();
  });
  stream.addEventListener("alert", (event) => {
    const alert = JSON.parse(event.data);
    if (alert.state === "active") alerts.set(alert.id, alert); else alerts.delete(alert.id);
    renderAlerts();
    renderFleet();
  });
}

start();
