// The qvdc dashboard: hash-routed pages over /api, redrawn whenever the event stream says
// something changed. Everything the cluster says is inserted as text, never as HTML.
"use strict";

const token = document.querySelector('meta[name="qvdc-token"]').content;
const main = document.getElementById("main");
const feed = document.getElementById("feed-list");
const live = document.getElementById("live");

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (v !== undefined && v !== null && v !== false) el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

const badge = (text) => h("span", { class: "badge " + String(text).replace(/\s/g, "_") }, text);
const link = (href, text) => h("a", { href }, text);

function bytes(n) {
  if (!n) return "0";
  const units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return (i === 0 ? n : n.toFixed(1)) + " " + units[i];
}

function table(headers, rows, id) {
  return h("table", { id },
    h("thead", {}, h("tr", {}, headers.map((x) => h("th", {}, x)))),
    h("tbody", {}, rows.map((r) => h("tr", { "data-key": r.key }, r.cells.map((c) => h("td", {}, c))))));
}

async function api(path) {
  const res = await fetch("/api/" + path, { cache: "no-store" });
  const body = await res.json();
  if (!res.ok) throw new Error(body.error || res.statusText);
  return body;
}

async function change(path, form) {
  const res = await fetch("/api/" + path, {
    method: "POST",
    headers: { "Content-Type": "application/json", "X-Qvdc-Token": token },
    body: JSON.stringify(form),
  });
  const body = await res.json();
  if (!res.ok) throw new Error(body.error || res.statusText);
  return body;
}

function source(spec) {
  const s = spec.source;
  if (s.Dir) return "dir " + s.Dir.path;
  if (s.Nfs) return "nfs " + s.Nfs.server + ":" + s.Nfs.export;
  if (s.Block) return "block " + s.Block.device + " (" + s.Block.fs_type + ")";
  return JSON.stringify(s);
}

// A form whose submission sends a change and says how it went, without reloading.
function form(id, fields, submit, onDone) {
  const message = h("div", { class: "message", hidden: true });
  const el = h("form", { class: "inline", id }, fields, h("button", { type: "submit" }, submit));
  el.addEventListener("submit", async (event) => {
    event.preventDefault();
    const data = {};
    for (const input of el.querySelectorAll("input, select")) {
      data[input.name] = input.type === "checkbox" ? input.checked
        : input.type === "number" ? Number(input.value) : input.value;
    }
    message.hidden = false;
    message.className = "message";
    message.textContent = "sending…";
    try {
      await onDone(data);
      message.className = "message good";
      message.textContent = "done";
      el.reset();
      schedule();
    } catch (e) {
      message.className = "message bad";
      message.textContent = e.message;
    }
  });
  return h("div", {}, el, message);
}

const field = (label, name, attrs) => h("label", {}, label, h("input", Object.assign({ name }, attrs || {})));

const pages = {
  async overview() {
    const [status, hosts, pools, vms] = await Promise.all([api("status"), api("hosts"), api("pools"), api("vms")]);
    const ready = hosts.filter((x) => x.liveness === "Ready").length;
    const healthy = pools.filter((p) => p.health === "HEALTHY").length;
    const running = vms.filter((v) => v.power === "running").length;
    const card = (n, what, extra) => h("div", { class: "card" }, h("div", { class: "n" }, n), what, extra ? h("div", { class: "muted" }, extra) : null);
    return [
      h("h1", {}, "Overview"),
      h("div", { class: "cards" },
        card(status.leader === null ? "none" : "node " + status.leader, "leader", "term " + status.term),
        card(status.members.length, "control-plane nodes", status.members.filter((m) => m.voter).length + " voters"),
        card(ready + " / " + hosts.length, "hosts ready", (hosts.length - ready) + " unreachable"),
        card(healthy + " / " + pools.length, "pools healthy"),
        card(running + " / " + vms.length, "VMs running")),
      h("h2", {}, "Members"),
      table(["node", "address", "role"], status.members.map((m) => ({
        key: m.node_id,
        cells: [m.node_id === status.leader ? "node " + m.node_id + " (leader)" : "node " + m.node_id, m.addr, m.voter ? "voter" : "learner"],
      }))),
    ];
  },

  async hosts() {
    const hosts = await api("hosts");
    return [
      h("h1", {}, "Hosts"),
      table(["host", "liveness", "maintenance", "CPUs", "memory", "hypervisor"], hosts.map((x) => ({
        key: x.host_id,
        cells: [link("#/hosts/" + encodeURIComponent(x.host_id), x.host_id), badge(x.liveness),
          x.maintenance ? badge("maintenance") : "", x.inventory.cpu_cores, bytes(x.inventory.memory_bytes), x.inventory.hypervisor],
      })), "hosts-table"),
    ];
  },

  async host(name) {
    const d = await api("hosts/" + encodeURIComponent(name));
    return [
      h("h1", {}, "Host " + d.host.host_id, " ", badge(d.host.liveness)),
      h("h2", {}, "Pools"),
      table(["pool", "health", "error"], d.pools.map((p) => ({
        key: p.pool, cells: [link("#/pools/" + encodeURIComponent(p.pool), p.pool), badge(p.health), h("span", { class: "error" }, p.error || "")],
      }))),
      h("h2", {}, "VMs"),
      table(["VM", "power", "desired"], d.vms.map((v) => ({
        key: v.spec.name, cells: [v.spec.name, badge(v.power), v.desired],
      }))),
    ];
  },

  async pools() {
    const pools = await api("pools");
    return [
      h("h1", {}, "Storage pools"),
      table(["pool", "source", "health", "healthy on", "failed on", "capacity"], pools.map((p) => ({
        key: p.spec.name,
        cells: [link("#/pools/" + encodeURIComponent(p.spec.name), p.spec.name), source(p.spec), badge(p.health),
          p.healthy_hosts.join(", "), h("span", { class: "error" }, p.failed_hosts.join(", ")), bytes(p.capacity.total_bytes)],
      })), "pools-table"),
      h("h2", {}, "Create a pool"),
      form("pool-form", [
        field("name", "name", { required: true, placeholder: "shared-nfs" }),
        h("label", {}, "type", h("select", { name: "type" }, ["dir", "nfs", "block"].map((t) => h("option", { value: t }, t)))),
        field("path (dir)", "path", { placeholder: "/srv/shared" }),
        field("server (nfs)", "server", { placeholder: "10.0.0.5" }),
        field("export (nfs)", "export", { placeholder: "/exports/vms" }),
        field("device (block)", "device", { placeholder: "/dev/sdb" }),
        field("filesystem (block)", "fs_type", { placeholder: "xfs" }),
        field("hosts", "hosts", { required: true, placeholder: "host-1,host-2" }),
      ], "Create", (data) => change("pools", data)),
    ];
  },

  async pool(name) {
    const p = await api("pools/" + encodeURIComponent(name));
    return [
      h("h1", {}, "Pool " + p.spec.name, " ", badge(p.health)),
      h("p", { class: "muted" }, source(p.spec) + " · " + p.spec.scope + " · " + bytes(p.capacity.used_bytes) + " used of " + bytes(p.capacity.total_bytes)),
      h("h2", {}, "On each host"),
      table(["host", "health", "mounted", "capacity", "used", "volumes", "error"], p.hosts.map((x) => ({
        key: x.host_id,
        cells: [link("#/hosts/" + encodeURIComponent(x.host_id), x.host_id), badge(x.health), x.mounted ? "yes" : "no",
          bytes(x.capacity.total_bytes), bytes(x.capacity.used_bytes), x.volume_count, h("span", { class: "error" }, x.error || "")],
      })), "pool-hosts"),
      h("h2", {}, "Volumes"),
      table(["volume", "format", "size", "host", "ready"], p.volumes.map((v) => ({
        key: v.name, cells: [v.name, v.format, bytes(v.size_bytes), v.host || "", v.ready ? "yes" : "no"],
      }))),
      h("h2", {}, "Assign or unassign hosts"),
      form("assign-form", [field("hosts", "hosts", { required: true, placeholder: "host-3" })], "Assign",
        (data) => change("pools/" + encodeURIComponent(name) + "/assign", data)),
      form("unassign-form", [field("hosts", "hosts", { required: true, placeholder: "host-3" })], "Unassign",
        (data) => change("pools/" + encodeURIComponent(name) + "/unassign", data)),
    ];
  },

  async vms() {
    const vms = await api("vms");
    return [
      h("h1", {}, "VMs"),
      table(["VM", "host", "desired", "power", "why", "error"], vms.map((v) => ({
        key: v.spec.name,
        cells: [v.managed ? v.spec.name : v.spec.name + " (unmanaged)", link("#/hosts/" + encodeURIComponent(v.host), v.host), v.desired, badge(v.power),
          h("span", { class: "muted" }, v.reason), h("span", { class: "error" }, v.error || "")],
      })), "vms-table"),
      h("h2", {}, "Create a VM"),
      form("vm-form", [
        field("name", "name", { required: true }),
        field("vCPUs", "vcpus", { type: "number", value: "1", min: "1" }),
        field("memory (MiB)", "memory_mib", { type: "number", value: "512", min: "16" }),
        field("disks (pool/volume, …)", "disks", { placeholder: "shared/web.qcow2" }),
        field("host (empty: placed)", "host", {}),
        h("label", {}, "start", h("input", { name: "start", type: "checkbox" })),
      ], "Create", (data) => change("vms", data)),
    ];
  },

  async networks() {
    const networks = await api("networks");
    return [
      h("h1", {}, "Networks"),
      table(["network", "bridge", "VLAN", "hosts"], networks.map((n) => ({
        key: n.spec.name,
        cells: [n.spec.name, n.spec.bridge, n.spec.vlan === null ? "" : n.spec.vlan + " on " + n.spec.uplink,
          h("span", {}, n.hosts.map((x) => h("span", {}, x.host_id + " ", badge(x.up ? "up" : "down"), x.error ? h("span", { class: "error" }, " " + x.error) : "", " ")))],
      }))),
    ];
  },

  async events() {
    const page = await api("events?last=200");
    const changes = page.changes.slice().reverse();
    return [
      h("h1", {}, "Events"),
      h("h2", {}, "Changes (audit trail)"),
      table(["#", "when", "who", "change", "outcome", "request"], changes.map((c) => ({
        key: c.seq,
        cells: [c.seq, new Date(c.at_ms).toLocaleString(), (c.by || "qvdc") + (c.via ? " via node " + c.via : ""), c.change,
          typeof c.outcome === "string" ? c.outcome : h("span", { class: "error" }, "refused: " + c.outcome.Refused), c.request_id || ""],
      })), "audit-table"),
      h("h2", {}, "Reported state now"),
      table(["object", "state"], page.reported.map((e) => ({ key: e.object, cells: [e.object, e.state || "gone"] }))),
    ];
  },
};

function route() {
  let parts;
  try {
    parts = location.hash.replace(/^#\/?/, "").split("/").map(decodeURIComponent);
  } catch (e) {
    return () => [h("h1", {}, "Not found")];
  }
  const [page, name] = parts;
  for (const a of document.querySelectorAll("nav a")) a.classList.toggle("active", a.dataset.page === (page || "overview"));
  if (page === "hosts" && name) return () => pages.host(name);
  if (page === "pools" && name) return () => pages.pool(name);
  const key = page || "overview";
  return Object.hasOwn(pages, key) ? () => pages[key]() : () => [h("h1", {}, "Not found")];
}

let drawing = null;
async function draw() {
  const render = route();
  try {
    const content = await render();
    // Keep what the operator is typing: a redraw must not wipe a form being filled in.
    const focused = document.activeElement;
    const typing = focused && (focused.tagName === "INPUT" || focused.tagName === "SELECT") && main.contains(focused);
    if (typing) {
      setTimeout(schedule, 1000);
      return;
    }
    main.replaceChildren(...content);
  } catch (e) {
    main.replaceChildren(h("h1", {}, "Cannot show this page"), h("p", { class: "error" }, e.message));
  }
}

let pending = null;
function schedule() {
  if (pending) return;
  pending = setTimeout(async () => {
    pending = null;
    if (drawing) await drawing;
    drawing = draw();
  }, 50);
}

function note(text) {
  feed.prepend(h("li", {}, text));
  while (feed.children.length > 200) feed.lastChild.remove();
}

function connect() {
  const stream = new EventSource("/api/stream");
  stream.addEventListener("open", () => { live.textContent = "live"; live.className = "live on"; });
  stream.addEventListener("error", () => { live.textContent = "reconnecting…"; live.className = "live off"; });
  stream.addEventListener("change", (event) => {
    const c = JSON.parse(event.data);
    note("#" + c.seq + " " + (c.by || "qvdc") + ": " + c.change);
    schedule();
  });
  stream.addEventListener("reported", (event) => {
    const e = JSON.parse(event.data);
    note(e.object + " " + (e.state || "gone"));
    schedule();
  });
  stream.addEventListener("trouble", (event) => {
    live.textContent = "cluster unreachable";
    live.className = "live off";
    note(JSON.parse(event.data).error);
  });
}

// The feed starts with the latest changes; the stream adds what happens from now on.
async function recent() {
  try {
    const page = await api("events?last=20");
    for (const c of page.changes) note("#" + c.seq + " " + (c.by || "qvdc") + ": " + c.change);
  } catch (e) {
    note(e.message);
  }
}

window.addEventListener("hashchange", () => { drawing = draw(); });
drawing = draw();
recent().then(connect);
