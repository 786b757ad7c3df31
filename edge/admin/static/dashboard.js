// edge dashboard: renders api/overview and refreshes it every few seconds.
// Every value is inserted as text (never as HTML): names come from labels.
"use strict";

const REFRESH_MS = 5000;
let last = null;

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else node.setAttribute(key, value);
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function pill(kind, text) {
  return el("span", { class: "pill " + kind, text: text });
}

function ago(seconds) {
  if (seconds === null || seconds === undefined) return "never";
  if (seconds < 1) return "just now";
  if (seconds < 90) return Math.round(seconds) + " s ago";
  if (seconds < 5400) return Math.round(seconds / 60) + " min ago";
  return Math.round(seconds / 3600) + " h ago";
}

function fill(tableId, rows) {
  const body = document.querySelector("#" + tableId + " tbody");
  body.replaceChildren(...rows);
  if (!rows.length) {
    const columns = document.querySelectorAll("#" + tableId + " thead th").length;
    body.append(el("tr", { class: "empty" }, el("td", { colspan: columns, class: "muted", text: "none" })));
  }
}

// What is known about a service's targets: checked up, checked down,
// passively failing (connections refused, no check), unchecked.
function targetsSummary(service) {
  if (!service) return pill("error", "missing");
  const total = service.targets.length;
  if (!total) return pill("error", "0 targets");
  const parts = [];
  if (service.targets_up) parts.push(service.targets_up + " up");
  if (service.targets_checked_down) parts.push(service.targets_checked_down + " failing check");
  if (service.targets_failing) parts.push(service.targets_failing + " refusing connections");
  if (service.targets_unchecked) parts.push(service.targets_unchecked + " unchecked");
  const kind = service.targets_down === total ? "error" : service.targets_down ? "warning"
    : service.targets_unchecked === total ? "unknown" : "ok";
  return pill(kind, parts.join(", "));
}

function plural(count, word) {
  return count + " " + word + (count === 1 ? "" : "s");
}

function renderSummary(data) {
  const s = data.summary;
  document.getElementById("summary").replaceChildren(
    el("span", {}, el("b", { text: s.routers }), " routers"),
    el("span", {}, el("b", { text: s.services }), " services"),
    el("span", {}, el("b", { text: s.targets }), " targets (",
      [s.targets_up + " up", s.targets_down ? s.targets_down + " down" : "",
       s.targets_unchecked ? s.targets_unchecked + " unchecked" : ""].filter(Boolean).join(", "), ")"),
    el("span", {}, el("b", { text: s.dns_names }), " DNS names"),
    ...(s.errors ? [pill("error", plural(s.errors, "error"))] : []),
    ...(s.warnings ? [pill("warning", plural(s.warnings, "warning"))] : []),
  );
  document.getElementById("version").textContent = data.version ? "v" + data.version : "";
  document.getElementById("updated").textContent = "snapshot #" + data.generation;
}

function renderProblems(problems) {
  const list = document.getElementById("problems");
  document.getElementById("problems-count").textContent = problems.length ? "(" + problems.length + ")" : "";
  if (!problems.length) {
    list.replaceChildren(el("li", { class: "none", text: "No problems." }));
    return;
  }
  list.replaceChildren(...problems.map((p) =>
    el("li", { class: p.level, "data-filter": (p.source + " " + p.message).toLowerCase() },
      pill(p.level === "error" ? "error" : "warning", p.level),
      el("span", { class: "source", text: p.source }),
      p.message,
      p.label ? el("span", { class: "muted", text: "  (" + p.label + ")" }) : null)));
}

function renderDiscovery(discovery) {
  const cards = discovery.map((d) =>
    el("div", { class: "card" },
      el("div", {}, el("span", { class: "name", text: d.name }), " ",
        pill(d.connected ? "ok" : "error", d.connected ? "connected" : "disconnected")),
      el("div", { class: "muted", text: "last sync " + ago(d.last_sync_age) + " · " + d.syncs + " syncs · " + d.errors + " errors" }),
      d.last_error ? el("div", { class: "muted", text: "last error: " + d.last_error }) : null));
  document.getElementById("discovery").replaceChildren(
    ...(cards.length ? cards : [el("div", { class: "card muted", text: "No provider has reported yet." })]));
}

function renderRouters(data) {
  const services = Object.fromEntries(data.services.map((s) => [s.name, s]));
  document.getElementById("routers-count").textContent = "(" + data.routers.length + ")";
  fill("routers", data.routers.map((r) => {
    const links = Object.fromEntries((r.urls || []).map((u) => [new URL(u).hostname, u]));
    const hosts = r.hosts.map((h) => h.startsWith("*") || !links[h] ? el("code", { text: h }) :
      el("a", { href: links[h], text: h }));
    const tls = !r.tls.enabled ? [pill("plain", "plain HTTP")]
      : r.tls.router ? [pill("tls", "TLS" + (r.tls.cert_resolver ? " · " + r.tls.cert_resolver : "")),
                        ...r.tls.domains.map((d) => el("div", { class: "muted", text: d }))]
      : [pill("tls", "TLS on " + r.tls.entrypoints.join(", "))];
    return el("tr", { "data-filter": [r.name, r.rule, r.service, ...r.hosts].join(" ").toLowerCase() },
      el("td", {}, pill(r.status, r.status)),
      el("td", {}, el("b", { text: r.name }), el("div", { class: "muted", text: "priority " + r.priority }),
        r.error ? el("div", { class: "error", text: r.error }) : null),
      el("td", {}, el("div", { class: "rule", text: r.rule }), hosts.length ? el("div", {}, ...hosts.flatMap((h, i) => i ? [" ", h] : [h])) : null),
      el("td", {}, ...r.entrypoints.map((e) => pill("plain", e))),
      el("td", {}, ...tls),
      el("td", {}, ...r.middlewares.map((m) => el("div", { title: m.detail }, m.type, m.detail ? el("span", { class: "muted", text: " " + m.detail }) : null))),
      el("td", {}, el("code", { text: r.service })),
      el("td", {}, targetsSummary(services[r.service])));
  }));
}

function renderServices(data) {
  document.getElementById("services-count").textContent = "(" + data.services.length + ")";
  fill("services", data.services.map((s) =>
    el("tr", { "data-filter": [s.name, ...s.routers, ...s.targets.map((t) => t.url)].join(" ").toLowerCase() },
      el("td", {}, pill(s.status, s.status)),
      el("td", {}, el("b", { text: s.name }), s.sticky ? el("div", { class: "muted", text: "sticky: " + s.sticky }) : null),
      el("td", {}, ...(s.targets.length ? s.targets.map((t) =>
        el("div", { class: "target" }, pill(t.health === "failing" ? "down" : t.health,
          t.health === "unknown" ? "unchecked" : t.health === "failing" ? "refusing connections" : t.health),
          el("code", { text: t.url }),
          t.weight !== 1 ? el("span", { class: "muted", text: " weight " + t.weight }) : null))
        : [el("span", { class: "muted", text: "no targets" })])),
      el("td", { class: "muted" }, s.health_check ? s.health_check.path + " every " + s.health_check.interval + " s" : "none"),
      el("td", {}, ...s.routers.map((r) => el("div", { text: r }))))));
}

function renderDNS(dns) {
  document.getElementById("dns-zone").textContent = dns.enabled
    ? "zone " + dns.zone + " · TTL " + dns.ttl + " s · port " + dns.port : "(disabled)";
  fill("dns", dns.names.map((n) =>
    el("tr", { "data-filter": (n.name + " " + n.source).toLowerCase() },
      el("td", {}, el("code", { text: n.name })),
      el("td", { text: n.type }),
      el("td", {}, n.values.length ? el("code", { text: n.values.join(", ") }) : el("span", { class: "muted", text: "no records (no address to answer with yet)" })),
      el("td", { class: "muted", text: n.source }))));
}

// ACME-managed certificates (/api/certificates): what was issued, when it
// renews, and the last order's error while there is one.
function renderCertificates(certificates) {
  fill("certificates", certificates.map((c) => {
    const status = c.ordering ? pill("warning", "ordering")
      : c.last_error ? pill(c.not_after ? "warning" : "error", c.not_after ? "renewal failing" : "not issued")
      : c.not_after ? pill("ok", "issued") : pill("unknown", "waiting");
    return el("tr", { "data-filter": (c.names.join(" ") + " " + c.resolver).toLowerCase() },
      el("td", {}, status),
      el("td", {}, ...c.names.map((n) => el("div", {}, el("code", { text: n })))),
      el("td", { text: c.resolver + " (" + c.challenge + ")" }),
      el("td", { class: "muted", text: c.issuer || "-" }),
      el("td", { text: c.not_after || "-" }),
      el("td", { class: "muted", text: c.renew_at || "-" }),
      el("td", {}, c.last_attempt || "never",
        c.last_error ? el("div", { class: "muted", text: c.last_error }) : null,
        c.next_attempt ? el("div", { class: "muted", text: "next try " + c.next_attempt }) : null));
  }));
}

// TCP and UDP routers (/api/tcp, /api/udp); older API answers have neither.
function renderL4(data) {
  const rows = [];
  for (const [protocol, section] of [["TCP", data.tcp], ["UDP", data.udp]]) {
    if (!section) continue;
    const services = Object.fromEntries(section.services.map((s) => [s.name, s]));
    for (const r of section.routers) {
      const service = services[r.service];
      const targets = service ? service.targets.map((t) => t.address).join(", ") : "";
      rows.push(el("tr", { "data-filter": (r.name + " " + (r.rule || "") + " " + r.service).toLowerCase() },
        el("td", {}, el("code", { text: r.name })), el("td", { text: protocol }),
        el("td", {}, el("code", { text: r.rule || "" })),
        el("td", {}, ...r.entrypoints.map((e) => pill("plain", e))),
        el("td", {}, r.tls ? pill("tls", r.tls) : null),
        el("td", {}, el("code", { text: r.service })),
        el("td", {}, targets ? el("code", { text: targets }) : pill("error", "0 targets"))));
    }
  }
  fill("l4", rows);
}

function renderTables(data) {
  renderL4(data);
  fill("entrypoints", data.entrypoints.map((e) =>
    el("tr", {}, el("td", { text: e.name }), el("td", {}, el("code", { text: e.address })),
      el("td", {}, e.tls ? pill("tls", "TLS") : e.protocol && e.protocol !== "http" ? pill("plain", e.protocol.toUpperCase()) : e.redirect_to ? pill("plain", "→ " + e.redirect_to) : pill("plain", "plain"),
        e.state === "not listening" ? pill("error", "not listening: " + e.error) : null))));
  fill("nodes", data.nodes.map((n) =>
    el("tr", {}, el("td", {}, n.hostname, n.leader ? el("span", { class: "muted", text: " (leader)" }) : null),
      el("td", { text: n.role }), el("td", {}, el("code", { text: n.address })),
      el("td", {}, pill(n.state === "ready" ? "ok" : "error", n.state)))));
}

function applyFilter() {
  const needle = document.getElementById("filter").value.trim().toLowerCase();
  for (const row of document.querySelectorAll("[data-filter]")) {
    row.classList.toggle("hidden", needle !== "" && !row.dataset.filter.includes(needle));
  }
}

function render(data) {
  last = data;
  renderSummary(data);
  renderProblems(data.problems);
  renderDiscovery(data.discovery);
  renderRouters(data);
  renderServices(data);
  renderDNS(data.dns);
  renderTables(data);
  applyFilter();
  document.body.dataset.generation = String(data.generation);
}

async function refresh() {
  const banner = document.getElementById("fetch-error");
  try {
    const response = await fetch("api/overview", { cache: "no-store", credentials: "same-origin" });
    if (!response.ok) throw new Error("HTTP " + response.status);
    render(await response.json());
    const certificates = await fetch("api/certificates", { cache: "no-store", credentials: "same-origin" });
    if (certificates.ok) {
      renderCertificates((await certificates.json()).certificates);
      applyFilter();
    }
    banner.hidden = true;
  } catch (error) {
    banner.textContent = "Cannot reach edge's API (" + error.message + ")" + (last ? "; showing the last answer." : ".");
    banner.hidden = false;
  }
}

document.getElementById("filter").addEventListener("input", applyFilter);
refresh();
setInterval(refresh, REFRESH_MS);
