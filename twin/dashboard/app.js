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
    if (risk !== null && twin.risk.imputed.length) { riskTd.append(" *"); riskTd.title = twin.risk_reason; }
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
  renderSignalCharts(machine);
  renderForecast(machine);
  renderAdvice(machine);
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
  const rows = contributions.slice(0, 8).map(([name, value]) => {
    const tr = document.createElement("tr");
    tr.append(cell(name), cell((value > 0 ? "+" : "") + value.toFixed(2)));
    return tr;
  });
  if (twin.risk && twin.risk.imputed.length) {
    const tr = document.createElement("tr");
    tr.append(cell("imputed (not sent)", "sev-minor"), cell(twin.risk.imputed.join(", "), "sev-minor"));
    rows.push(tr);
  }
  $("#contributions tbody").replaceChildren(...rows);
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
  stream.addEventListener("order", () => loadOrders());
  stream.addEventListener("alert", (event) => {
    const alert = JSON.parse(event.data);
    if (alert.state === "active") alerts.set(alert.id, alert); else alerts.delete(alert.id);
    renderAlerts();
    renderFleet();
  });
}


// -- charts: plain SVG ---------------------------------------------------------------------
const SVG = "http://www.w3.org/2000/svg";
function svgEl(name, attrs, text) {
  const el = document.createElementNS(SVG, name);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
  if (text !== undefined) el.textContent = text;
  return el;
}

// A line chart: series [{points: [[x, y]], color, dash}], optional band [[x, low, high]] and
// horizontal line {y, label}; axes labelled with their ends.
function lineChart({ title, series, band, hline, xFormat, yMin, yMax, width = 360, height = 140 }) {
  const pad = { l: 42, r: 8, t: 16, b: 18 };
  const xs = series.flatMap((s) => s.points.map((p) => p[0]));
  const ys = series.flatMap((s) => s.points.map((p) => p[1])).concat(band ? band.flatMap((b) => [b[1], b[2]]) : []);
  const x0 = Math.min(...xs), x1 = Math.max(...xs);
  let y0 = yMin ?? Math.min(...ys), y1 = yMax ?? Math.max(...ys);
  if (y1 - y0 < 1e-9) { y0 -= 1; y1 += 1; }
  const X = (x) => pad.l + ((x - x0) / Math.max(x1 - x0, 1e-9)) * (width - pad.l - pad.r);
  const Y = (y) => height - pad.b - ((y - y0) / (y1 - y0)) * (height - pad.t - pad.b);
  const svg = svgEl("svg", { class: "chart", width, height, viewBox: `0 0 ${width} ${height}` });
  svg.append(svgEl("text", { x: pad.l, y: 11 }, title));
  if (band && band.length) {
    const upper = band.map((b) => `${X(b[0])},${Y(b[2])}`);
    const lower = band.slice().reverse().map((b) => `${X(b[0])},${Y(b[1])}`);
    svg.append(svgEl("polygon", { class: "band", points: upper.concat(lower).join(" "), fill: "#ffcdd2", stroke: "none" }));
  }
  if (hline) {
    svg.append(svgEl("line", { x1: pad.l, x2: width - pad.r, y1: Y(hline.y), y2: Y(hline.y), stroke: "#555", "stroke-dasharray": "4 3" }));
    svg.append(svgEl("text", { x: width - pad.r - 90, y: Y(hline.y) - 3 }, hline.label));
  }
  for (const s of series) {
    svg.append(svgEl("polyline", {
      points: s.points.map((p) => `${X(p[0])},${Y(p[1])}`).join(" "),
      fill: "none", stroke: s.color || "#1565c0", "stroke-width": 1.5, "stroke-dasharray": s.dash || "",
    }));
  }
  const fmt = (v) => (Math.abs(v) >= 1000 ? v.toFixed(0) : Number(v.toPrecision(3)).toString());
  svg.append(svgEl("text", { x: 2, y: Y(y1) + 4 }, fmt(y1)), svgEl("text", { x: 2, y: Y(y0) }, fmt(y0)));
  svg.append(svgEl("text", { x: pad.l, y: height - 4 }, xFormat(x0)));
  svg.append(svgEl("text", { x: width - pad.r - 40, y: height - 4 }, xFormat(x1)));
  return svg;
}

async function getJson(url, options) {
  const response = await fetch(url, options);
  const body = await response.json();
  if (!response.ok) throw new Error(typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail));
  return body;
}
const postJson = (url, body, headers = {}) =>
  getJson(url, { method: "POST", headers: { "Content-Type": "application/json", ...headers }, body: JSON.stringify(body) });

async function renderSignalCharts(machine) {
  const history = await getJson(`/machines/${encodeURIComponent(machine)}/history?start=-1h`);
  const charts = Object.entries(history.series).filter(([, points]) => points.length > 1).map(([name, points]) =>
    lineChart({ title: name, width: 240, height: 110, xFormat: time, series: [{ points: points.map((p) => [p.ts, p.value ?? p.mean]) }] }));
  $("#signal-charts").replaceChildren(...(charts.length ? charts : [document.createTextNode("no history in the last hour")]));
}

async function renderForecast(machine) {
  try {
    const f = await getJson(`/machines/${encodeURIComponent(machine)}/forecast?horizon=8h&step=10m`);
    const chart = lineChart({
      title: `P(failure within ${f.probability_window_min ?? "the model's"} min) — ${f.method}`,
      xFormat: (m) => `+${(m / 60).toFixed(1)} h`, yMin: 0, yMax: 1,
      series: [{ points: f.points.map((p) => [p.t_min, p.probability]), color: "#c62828" }],
      band: f.points.map((p) => [p.t_min, p.low, p.high]),
      hline: { y: f.threshold, label: `threshold ${pct(f.threshold)}` },
    });
    $("#forecast-chart").replaceChildren(chart);
    const at = f.crosses_threshold_at_min;
    $("#forecast-text").textContent = (at === null ? "does not cross the threshold within 8 h" : `crosses the threshold in ${at} min`)
      + (f.p_t_fit.t0_min === null ? "; flat over the horizon"
        : `; p(t) = 1/(1+e^(-${f.p_t_fit.theta}(t - ${f.p_t_fit.t0_min}))), rmse ${f.p_t_fit.rmse}`);
  } catch (error) {
    $("#forecast-chart").replaceChildren();
    $("#forecast-text").textContent = "no forecast: " + error.message;
  }
}

let whatifTimer = null;
async function runWhatif(machine) {
  const values = {};
  for (const input of document.querySelectorAll("#whatif input")) values[input.name] = Number(input.value);
  try {
    const answer = await postJson(`/machines/${encodeURIComponent(machine)}/whatif`, { values });
    $("#whatif-result").textContent = `risk now ${pct(answer.now.probability)} → with these settings ${pct(answer.whatif.probability)}`;
  } catch (error) { $("#whatif-result").textContent = error.message; }
}

async function renderAdvice(machine) {
  $("#advice-apply").hidden = true;
  let advice;
  try { advice = await postJson(`/machines/${encodeURIComponent(machine)}/advice`, {}); } catch (error) {
    $("#whatif").replaceChildren(); $("#advice").textContent = error.message; return;
  }
  const twin = machines.get(machine);
  $("#whatif").replaceChildren(...Object.entries(advice.controllable).map(([name, [low, high]]) => {
    const label = document.createElement("label");
    const input = htmlEl("input", { type: "range", name, min: low, max: high, step: (high - low) / 200, value: twin.values[name].value });
    const shown = document.createElement("span");
    shown.textContent = ` ${input.value}`;
    input.oninput = () => { shown.textContent = ` ${input.value}`; clearTimeout(whatifTimer); whatifTimer = setTimeout(() => runWhatif(machine), 150); };
    label.append(name + " ", input, shown);
    return label;
  }));
  $("#advice").textContent = advice.advice;
  if (advice.feasible && advice.change && Object.keys(advice.change).length) {
    $("#advice-apply").hidden = false;
    $("#advice-apply").onclick = () => {
      for (const [name, c] of Object.entries(advice.change)) {
        const input = document.querySelector(`#whatif input[name="${name}"]`);
        input.value = c.to; input.dispatchEvent(new Event("input"));
      }
    };
  }
  runWhatif(machine);
}

function htmlEl(name, attrs) {
  const el = document.createElement(name);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
  return el;
}

// -- maintenance ---------------------------------------------------------------------------
function timeline(windows, horizonMin) {
  const names = [...new Set(windows.map((w) => w.machine))].sort();
  const width = 720, row = 18, left = 90, height = 24 + row * Math.max(names.length, 1);
  const X = (m) => left + (m / horizonMin) * (width - left - 10);
  const svg = svgEl("svg", { class: "chart", width, height, viewBox: `0 0 ${width} ${height}` });
  for (let h = 0; h <= horizonMin / 60; h++) {
    svg.append(svgEl("line", { x1: X(h * 60), x2: X(h * 60), y1: 12, y2: height, stroke: "#eee" }));
    svg.append(svgEl("text", { x: X(h * 60) - 6, y: 10 }, `+${h}h`));
  }
  names.forEach((name, i) => svg.append(svgEl("text", { x: 2, y: 26 + i * row }, name)));
  for (const w of windows) {
    const i = names.indexOf(w.machine);
    const rect = svgEl("rect", { class: "window", x: X(w.start_min), y: 16 + i * row, width: Math.max(X(w.end_min) - X(w.start_min), 2), height: row - 4, fill: w.state ? "#2e7d32" : "#1565c0" });
    rect.append(svgEl("title", {}, `${w.machine}: ${w.action} ${w.start_min}-${w.end_min} min` + (w.reason ? `, risk ${pct(w.reason.risk_before)} → ${pct(w.reason.risk_after)}, saves ${w.reason.expected_cost_avoided}` : "")));
    svg.append(rect);
  }
  return svg;
}

async function planMaintenance() {
  let plan;
  try { plan = await postJson("/maintenance/plans", { horizon: "8h" }, tokenHeaders()); } catch (error) { alert(error.message); return; }
  $("#timeline").replaceChildren(plan.windows.length ? timeline(plan.windows, plan.horizon_min) : document.createTextNode("no service pays within 8 h"));
  const rows = [["plan", plan.objective], ["run to failure", plan.baselines.run_to_failure], [`every ${plan.baselines.fixed_interval.interval_min} min`, plan.baselines.fixed_interval]];
  $("#plan-costs tbody").replaceChildren(...rows.map(([name, o]) => {
    const tr = document.createElement("tr");
    tr.append(cell(name), cell(`cost ${Math.round(o.total).toLocaleString()}`), cell(`${o.expected_failures.toFixed(2)} failures expected`), cell(`${o.actions} services`));
    return tr;
  }));
  $("#accept-button").hidden = !plan.windows.length;
  $("#accept-button").onclick = async () => {
    try { await postJson(`/maintenance/plans/${plan.id}/accept`, {}, tokenHeaders()); } catch (error) { alert(error.message); return; }
    $("#accept-button").hidden = true;
    loadMaintenance();
  };
}

async function loadMaintenance() {
  const list = await getJson("/maintenance?limit=200");
  $("#maintenance-list tbody").replaceChildren(...list.items.map((w) => {
    const tr = document.createElement("tr");
    tr.append(cell(w.machine), cell(w.action), cell(new Date(w.start_ms).toLocaleString()), cell(time(w.end_ms)), cell(w.state));
    return tr;
  }));
}

// -- orders --------------------------------------------------------------------------------
let catalogue = [];
let shownOrder = null;

function routing(operations, t0) {
  // Operations as bars by machine, minutes from t0: planned (blue), started (amber), done (green).
  const names = [...new Set(operations.map((o) => o.machine))].sort();
  const end = Math.max(60, ...operations.map((o) => o.end_min));
  const width = 720, row = 18, left = 90, height = 24 + row * Math.max(names.length, 1);
  const X = (m) => left + (m / end) * (width - left - 10);
  const svg = svgEl("svg", { class: "chart", width, height, viewBox: `0 0 ${width} ${height}` });
  const tick = end > 600 ? 120 : 60;
  for (let m = 0; m <= end; m += tick) {
    svg.append(svgEl("line", { x1: X(m), x2: X(m), y1: 12, y2: height, stroke: "#eee" }));
    svg.append(svgEl("text", { x: X(m) - 6, y: 10 }, `+${m / 60}h`));
  }
  names.forEach((name, i) => svg.append(svgEl("text", { x: 2, y: 26 + i * row }, name)));
  const colour = { planned: "#1565c0", started: "#f9a825", done: "#2e7d32", cancelled: "#9e9e9e" };
  for (const o of operations) {
    const i = names.indexOf(o.machine);
    const rect = svgEl("rect", { class: "operation", x: X(o.start_min), y: 16 + i * row, width: Math.max(X(o.end_min) - X(o.start_min), 2), height: row - 4, fill: colour[o.state || "planned"] });
    rect.append(svgEl("title", {}, `${o.operation}: ${o.machine} ${o.start_min.toFixed(0)}-${o.end_min.toFixed(0)} min${o.state ? ", " + o.state : ""}`));
    svg.append(rect);
  }
  return svg;
}

function renderOptions() {
  const product = catalogue.find((p) => p.id === $("#quote-product").value);
  $("#quote-options").replaceChildren(...Object.entries(product ? product.options : {}).map(([name, option]) => {
    const label = htmlEl("label", {});
    label.append(document.createTextNode((option.label || name) + " "));
    let input;
    if (option.values) {
      input = htmlEl("select", { "data-option": name });
      for (const v of option.values) { const o = htmlEl("option", { value: v }); o.textContent = v; if (v === option.default) o.selected = true; input.append(o); }
    } else {
      input = htmlEl("input", { "data-option": name, maxlength: option.max_length, pattern: option.pattern, placeholder: "optional" });
      input.value = option.default;
    }
    label.append(input);
    return label;
  }));
}

function quoteBody() {
  const options = {};
  document.querySelectorAll("#quote-options [data-option]").forEach((el) => { options[el.dataset.option] = el.value; });
  const body = { product: $("#quote-product").value, options, quantity: Number($("#quote-quantity").value) };
  if ($("#quote-due").value) body.due = new Date($("#quote-due").value).toISOString();
  if ($("#quote-customer").value) body.customer = $("#quote-customer").value;
  return body;
}

async function quote(event) {
  event.preventDefault();
  $("#quote-error").textContent = "";
  let answer;
  try { answer = await postJson("/orders/quote", quoteBody(), tokenHeaders()); } catch (error) { $("#quote-error").textContent = error.message; return; }
  const price = answer.scheme.price;
  $("#quote-scheme tbody").replaceChildren(...answer.scheme.operations.map((o) => {
    const tr = document.createElement("tr");
    tr.append(cell(o.name), cell(`type ${o.machine_type || "any"}${o.site ? " at " + o.site : ""}`), cell(`${o.duration_min.toFixed(0)} min`));
    return tr;
  }), (() => { const tr = document.createElement("tr"); tr.append(cell("price"), cell(`${price.total.toLocaleString()} ${price.currency}`), cell(`${answer.scheme.work_min.toFixed(0)} min of work`)); return tr; })());
  const promise = answer.promise;
  if (!promise) {
    $("#quote-promise").textContent = `No promise: ${answer.unavailable}.`;
    $("#quote-timeline").replaceChildren();
    $("#place-button").hidden = true;
    return;
  }
  const onTime = promise.p_on_time === null ? "" : `, ${pct(promise.p_on_time)} chance of making the due time`;
  const others = answer.alternatives.map((a) => `${a.description}: ${new Date(a.completion).toLocaleString()}`).join("; ");
  $("#quote-promise").textContent = `Promised ${new Date(promise.completion).toLocaleString()} (${promise.expected_failures.toFixed(2)} failures expected${onTime}).` + (others ? ` Alternatives: ${others}.` : "");
  $("#quote-timeline").replaceChildren(routing(promise.operations));
  $("#place-button").hidden = false;
}

async function placeOrder() {
  try { await postJson("/orders", quoteBody(), tokenHeaders()); } catch (error) { $("#quote-error").textContent = error.message; return; }
  $("#place-button").hidden = true;
  loadOrders();
}

function orderOperations(order) {
  const t0 = order.created_at;
  return order.operations.map((o) => {
    const start = o.started_ms || o.planned_start_ms;
    const end = o.done_ms || Math.max(o.planned_end_ms, start + 1);
    return { operation: o.name, machine: o.machine, state: o.state, start_min: (start - t0) / 60000, end_min: (end - t0) / 60000 };
  });
}

function showOrder(order) {
  shownOrder = order.id;
  $("#order-timeline").replaceChildren(document.createTextNode(`Order ${order.id}: ${order.status}, ETA ${new Date(order.eta).toLocaleString()}`), routing(orderOperations(order)));
}

async function loadOrders() {
  const page = await getJson("/orders?limit=50");
  $("#order-list tbody").replaceChildren(...page.items.map((o) => {
    const tr = document.createElement("tr");
    tr.append(cell(String(o.id)), cell(o.customer || ""), cell(o.product), cell(String(o.quantity)), cell(o.status, o.status === "late" ? "off" : ""), cell(new Date(o.eta).toLocaleString()), cell(o.due ? new Date(o.due).toLocaleString() : ""));
    tr.onclick = () => showOrder(o);
    if (o.id === shownOrder) showOrder(o);
    return tr;
  }));
}

async function startOrders() {
  catalogue = (await getJson("/catalogue")).products;
  $("#quote-product").replaceChildren(...catalogue.map((p) => { const o = htmlEl("option", { value: p.id }); o.textContent = p.name; return o; }));
  $("#quote-product").onchange = renderOptions;
  renderOptions();
  $("#quote-form").onsubmit = quote;
  $("#place-button").onclick = placeOrder;
  loadOrders();
}

$("#plan-button").onclick = planMaintenance;
start();
loadMaintenance();
startOrders();
