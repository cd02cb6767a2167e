// kiln ui: renders api/state, then every server-sent update. No framework:
// one render path for the first paint and for live updates; every value goes
// into the page as text (textContent), never as markup.
"use strict";

const $ = (id) => document.getElementById(id);

function el(tag, props, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props || {})) {
    if (key === "class") node.className = value;
    else if (key === "data") Object.assign(node.dataset, value);
    else node.setAttribute(key, value);
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

function age(seconds) {
  if (seconds === null || seconds === undefined) return "-";
  const s = Math.max(0, Math.round(seconds));
  if (s < 120) return `${s}s`;
  if (s < 7200) return `${Math.round(s / 60)}m`;
  if (s < 172800) return `${Math.round(s / 3600)}h`;
  return `${Math.round(s / 86400)}d`;
}

function when(ts) {
  return ts ? new Date(ts * 1000).toISOString().replace("T", " ").slice(0, 19) + "Z" : "-";
}

function size(bytes) {
  if (!bytes && bytes !== 0) return "-";
  const units = ["B", "KiB", "MiB", "GiB"];
  let n = bytes, u = 0;
  while (n >= 1024 && u < units.length - 1) { n /= 1024; u++; }
  return u === 0 ? `${n} B` : `${n.toFixed(1)} ${units[u]}`;
}

const slug = (text) => String(text || "").replace(/\s+/g, "-");

function renderSummary(data) {
  const s = data.status || {};
  $("fleet-name").textContent = `fleet ${s.fleet || data.app}`;
  $("provider").textContent = `(${data.provider})`;
  document.title = `kiln · ${s.fleet || data.app}`;
  const lines = [
    `endpoint ${s.endpoint || "-"} · desired ${s.desired_size ?? "-"} · serving ${s.serving ?? "-"}`,
  ];
  if ("current_image" in s) lines.push(`image ${s.current_image || "-"} · previous ${s.previous_image || "-"}`);
  for (const g of s.groups || []) lines.push(`group ${g.name}: ${g.image} ×${g.desired} (${g.attached ? "attached" : "detached"})`);
  if (s.warm_standby) lines.push(`warm standby ${s.warm_standby.image} ×${s.warm_standby.instances.length} until ${when(s.warm_standby.until)}`);
  const dep = s.deployment_in_progress;
  if (dep) lines.push(`deployment ${dep.id} (${dep.from || "nothing"} → ${dep.to}, ${dep.strategy}) is ${dep.outcome}`);
  if (s.lock) lines.push(`locked by ${s.lock.holder}`);
  $("summary").replaceChildren(...lines.map((t) => el("p", {}, t)));
  const problems = data.errors || [];
  $("problems").hidden = problems.length === 0;
  $("problems").textContent = problems.join("; ");
}

function renderInstances(data) {
  const counters = data.counters || {};
  const rows = ((data.status || {}).instances || []).map((i) => {
    const c = counters[i.id] || {};
    return el("tr", { data: { instance: i.id } },
      el("td", { class: "mono" }, i.id),
      el("td", { class: "mono" }, i.image),
      el("td", { class: `state-${i.state}` }, i.state + (i.warm ? " (warm)" : "")),
      el("td", {}, i.in_service && !["failed", "terminated"].includes(i.state) ? "yes" : "no"),
      el("td", {}, age(i.age)),
      el("td", {}, c.requests ?? "-"),
      el("td", {}, c.errors ?? "-"),
      el("td", { class: "mono" }, i.address || "-"));
  });
  const body = $("instances").tBodies[0];
  body.replaceChildren(...(rows.length ? rows : [el("tr", {}, el("td", { colspan: "8" }, "no instances"))]));
}

function renderSparkline(data) {
  const svg = $("sparkline");
  const series = data.series || [];
  const ns = "http://www.w3.org/2000/svg";
  svg.replaceChildren();
  if (series.length < 2) return;
  const t0 = series[0][0], t1 = series[series.length - 1][0];
  const top = Math.max(1, ...series.map((p) => p[1]));
  const x = (t) => ((t - t0) / Math.max(1, t1 - t0)) * 600;
  const y = (v) => 78 - (v / top) * 74;
  const line = (index, cls) => {
    const path = document.createElementNS(ns, "polyline");
    path.setAttribute("points", series.map((p) => `${x(p[0]).toFixed(1)},${y(p[index]).toFixed(1)}`).join(" "));
    path.setAttribute("fill", "none");
    path.setAttribute("stroke", cls === "errors" ? "#a4001d" : "#1a4fa0");
    path.setAttribute("stroke-width", "1.5");
    svg.append(path);
  };
  for (const d of data.timeline || []) {
    if (d.started < t0 || d.started > t1) continue;
    const mark = document.createElementNS(ns, "line");
    for (const [k, v] of [["x1", x(d.started)], ["x2", x(d.started)], ["y1", 0], ["y2", 80]]) mark.setAttribute(k, v);
    mark.setAttribute("stroke", "#7a4b00");
    mark.setAttribute("stroke-dasharray", "3 3");
    svg.append(mark);
  }
  line(1, "requests");
  line(2, "errors");
  const last = series[series.length - 1];
  const errors = series.reduce((n, p) => n + p[2], 0);
  $("traffic-desc").textContent =
    `${last[1].toFixed(1)} requests/s now, peak ${top.toFixed(1)}; ` +
    `${errors === 0 ? "no errors" : `${errors.toFixed(1)} error-seconds`} in the last ${age(t1 - t0)}`;
}

function renderDeployment(d, now) {
  const outcome = d.outcome || "unknown";
  const end = d.finished || now;
  const span = Math.max(0.001, end - d.started);
  const bar = el("div", { class: "bar", role: "img",
    "aria-label": `${d.steps.length} steps over ${age(span)}` });
  for (const step of d.steps) {
    if (!step.began) continue;
    const stop = step.done || (d.finished ? step.began : now);
    const seg = el("span", { class: `seg ${step.phase === "rollback" ? "rollback" : step.kind}${step.done ? "" : " running"}`,
      title: step.what });
    seg.style.left = `${((step.began - d.started) / span) * 100}%`;
    seg.style.width = `${Math.max(0.5, ((stop - step.began) / span) * 100)}%`;
    bar.append(seg);
  }
  const steps = el("ol", { class: "steps" }, ...d.steps.map((s) =>
    el("li", { data: { phase: s.phase, kind: s.kind } },
      `${s.phase === "rollback" ? "rollback: " : ""}${s.what} — ` +
      (s.done ? `done in ${age(s.done - s.began)}` : s.began ? "running" : "not started"))));
  const item = el("li", { data: { deployment: d.id || "", outcome: slug(outcome) } },
    el("strong", {}, `${d.kind || "deploy"} ${d.id || ""}`), " ",
    el("span", { class: `outcome-${slug(outcome)}` }, outcome), " ",
    el("span", {}, `${d.from || "nothing"} → ${d.to || "nothing"}`), " ",
    el("span", { class: "muted" }, `${d.strategy || ""} · ${when(d.started)} · ${d.duration ? age(d.duration) : "running"} · ${d.who || ""}`),
    d.reason ? el("p", {}, `why: ${d.reason}`) : null,
    bar,
    d.traffic ? el("p", { class: d.traffic.errors ? "traffic problem" : "traffic" },
      `while it ran: ${d.traffic.requests} requests, ${d.traffic.errors} errors` +
      (d.traffic.covered ? "" : " (partly sampled)")) : null,
    d.message ? el("p", { class: outcome === "succeeded" ? "" : "problem" }, d.message) : null,
    d.gate ? el("p", { class: "gate" }, `gate tripped: ${d.gate}` + (d.instance ? ` (${d.instance})` : "")) : null,
    d.steps.length ? el("details", {}, el("summary", {}, "steps"), steps) : null,
    d.log_tail ? el("details", { open: "" }, el("summary", {}, "log tail"), el("pre", { class: "log" }, d.log_tail)) : null);
  return item;
}

function renderTimeline(data) {
  const list = (data.timeline || []).map((d) => renderDeployment(d, data.at));
  $("deployments").replaceChildren(...(list.length ? list : [el("li", {}, "no deployments yet")]));
}

function renderImages(data) {
  const running = new Set(((data.status || {}).instances || []).filter((i) => !["failed", "terminated"].includes(i.state)).map((i) => i.image));
  const rows = (data.images || []).map((img) => {
    const id = img.image || img.id || img.ami;
    return el("tr", {},
      el("td", { class: "mono" }, id + (img.ami && img.image ? ` (${img.ami})` : "")),
      el("td", {}, typeof img.created === "number" ? when(img.created) : img.created || "-"),
      el("td", {}, size(img.bytes ?? img.size)),
      el("td", {}, img.files ?? "-"),
      el("td", { class: "mono" }, (img.commit || "-").slice(0, 10)),
      el("td", {}, running.has(img.image || id) ? "yes" : ""));
  });
  $("images").tBodies[0].replaceChildren(...(rows.length ? rows : [el("tr", {}, el("td", { colspan: "6" }, "no images"))]));
}

function render(data) {
  if (!data || !data.app) return;
  renderSummary(data);
  renderInstances(data);
  renderSparkline(data);
  renderTimeline(data);
  renderImages(data);
  document.body.dataset.version = String((Number(document.body.dataset.version) || 0) + 1);
}

function connect() {
  const source = new EventSource("events");
  source.onopen = () => { $("connection").textContent = "live"; };
  source.onmessage = (event) => render(JSON.parse(event.data));
  source.onerror = () => { $("connection").textContent = "reconnecting…"; };
}

fetch("api/state", { credentials: "same-origin" })
  .then((r) => r.json())
  .then(render)
  .finally(connect);
