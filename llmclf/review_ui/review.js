// llmclf review page: work through the review queue by keyboard.
// Every piece of data reaches the page through textContent; no HTML is built from strings.
"use strict";

(function () {
  const KEY_STORE = "llmclf-review-key";
  const state = {
    key: sessionStorage.getItem(KEY_STORE) || "",
    auth: false,
    tasks: [],
    items: [],
    pos: 0,
    selected: new Set(),
    toggled: new Set(),
    history: [],
    counts: null,
    busy: false,
  };
  const $ = (id) => document.getElementById(id);

  function el(tag, text, cls) {
    const node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = String(text);
    if (cls) node.className = cls;
    return node;
  }

  function say(msg) { $("status").textContent = msg || ""; }
  function fail(msg) { $("error").textContent = msg || ""; }

  async function api(method, path, body) {
    const headers = { "Accept": "application/json" };
    if (state.key) headers["X-API-Key"] = state.key;
    if (body !== undefined) headers["Content-Type"] = "application/json";
    const resp = await fetch(path, {
      method, headers, body: body === undefined ? undefined : JSON.stringify(body),
      credentials: "omit", cache: "no-store",
    });
    let data = null;
    try { data = await resp.json(); } catch (e) { data = null; }
    if (resp.status === 401) {
      showKeyForm();
      throw new Error((data && data.error && data.error.message) || "an API key is needed");
    }
    if (!resp.ok) {
      const msg = (data && data.error && data.error.message) || ("HTTP " + resp.status);
      const err = new Error(msg);
      err.status = resp.status;
      err.data = data;
      throw err;
    }
    return data;
  }

  function showKeyForm() {
    $("keyform").hidden = false;
    $("apikey").focus();
  }

  function taskInfo(name) {
    return state.tasks.find((t) => t.name === name) || { name, labels: [], kind: null };
  }

  function filters() {
    const band = $("f-band").value.split("-");
    const q = new URLSearchParams();
    if ($("f-task").value) q.set("task", $("f-task").value);
    q.set("status", $("f-status").value);
    q.set("min_conf", band[0]);
    q.set("max_conf", band[1]);
    if ($("f-route").value) q.set("route", $("f-route").value);
    return q;
  }

  async function loadTasks() {
    const data = await api("GET", "/v1/review/tasks");
    state.tasks = data.tasks;
    const sel = $("f-task");
    const keep = sel.value;
    sel.replaceChildren();
    const all = el("option", "all tasks");
    all.value = "";
    sel.appendChild(all);
    for (const t of state.tasks) {
      const o = el("option", t.name);
      o.value = t.name;
      sel.appendChild(o);
    }
    if (keep && state.tasks.some((t) => t.name === keep)) sel.value = keep;
    else if (state.tasks.length === 1) sel.value = state.tasks[0].name;
  }

  async function reload() {
    fail("");
    try {
      await loadTasks();
      const data = await api("GET", "/v1/review/items?" + filters().toString());
      state.items = data.items;
      state.counts = data.counts;
      state.pos = 0;
      state.selected.clear();
      state.toggled.clear();
      render();
      say(state.items.length ? "" : "nothing to review with these filters");
    } catch (e) {
      fail(e.message);
    }
  }

  function isOpen(item) { return item.status === "pending"; }

  function renderCounter() {
    const c = state.counts;
    if (!c) return;
    const done = (c.labelled || 0) + (c.skipped || 0);
    $("counter").textContent = "done " + done + " · left " + (c.pending || 0);
  }

  function renderCurrent() {
    const box = $("current");
    box.replaceChildren();
    const item = state.items[state.pos];
    if (!item) {
      box.appendChild(el("p", "The queue is empty for these filters."));
      return;
    }
    const info = taskInfo(item.task);
    box.appendChild(el("p", "#" + item.id + " · " + item.task + " · " + item.status, "meta"));
    const text = el("p", item.text, "text");
    text.id = "item-text";
    box.appendChild(text);
    box.appendChild(el("p", "model: " + (item.labels.join(", ") || "-") +
      " (confidence " + item.confidence.toFixed(2) + ")", "meta model-label"));
    box.appendChild(el("p", "route: " + (item.route.join(" > ") || "-") +
      (item.route_reason ? " — " + item.route_reason : ""), "meta"));
    if (item.review_reason) box.appendChild(el("p", "queued: " + item.review_reason, "meta"));
    if (item.shadow) {
      box.appendChild(el("p", "shadow " + (item.shadow.backend || "") + " said: " +
        (item.shadow.labels || []).join(", "), "meta"));
    }
    box.appendChild(el("p", "arrived: " + new Date(item.created * 1000).toLocaleString(), "meta"));
    if (item.gold) box.appendChild(el("p", "gold: " + item.gold.join(", "), "meta"));
    const table = el("table", null, "scores");
    const labels = info.labels.length ? info.labels : Object.keys(item.scores);
    for (const lab of labels) {
      const tr = el("tr");
      const score = item.scores[lab] || 0;
      tr.appendChild(el("td", lab));
      tr.appendChild(el("td", score.toFixed(2)));
      const barCell = el("td");
      const bar = el("span", null, "bar");
      bar.style.width = Math.round(score * 120) + "px";
      barCell.appendChild(bar);
      tr.appendChild(barCell);
      table.appendChild(tr);
    }
    box.appendChild(table);
    const buttons = el("div", null, "labels");
    labels.forEach((lab, i) => {
      const b = el("button", (i < 9 ? (i + 1) + " " : "") + lab);
      b.type = "button";
      b.dataset.label = lab;
      if (item.labels.includes(lab)) b.classList.add("model");
      if (info.kind === "multilabel") b.setAttribute("aria-pressed", String(state.toggled.has(lab)));
      b.addEventListener("click", () => pick(i));
      buttons.appendChild(b);
    });
    box.appendChild(buttons);
  }

  function renderQueue() {
    const list = $("queue");
    list.replaceChildren();
    state.items.forEach((item, i) => {
      const li = el("li", "#" + item.id + " " + (item.labels.join(",") || "-") + " " +
        item.confidence.toFixed(2) + " · " + item.text);
      li.dataset.id = String(item.id);
      if (i === state.pos) li.classList.add("active");
      if (!isOpen(item)) li.classList.add("done");
      if (state.selected.has(item.id)) li.classList.add("selected");
      li.addEventListener("click", () => { state.pos = i; state.toggled.clear(); render(); });
      list.appendChild(li);
    });
    const active = list.querySelector("li.active");
    if (active && active.scrollIntoView) active.scrollIntoView({ block: "nearest" });
  }

  function render() {
    renderCounter();
    renderCurrent();
    renderQueue();
  }

  function advance() {
    state.toggled.clear();
    for (let i = state.pos + 1; i < state.items.length; i++) {
      if (isOpen(state.items[i])) { state.pos = i; return; }
    }
    for (let i = 0; i < state.items.length; i++) {
      if (isOpen(state.items[i])) { state.pos = i; return; }
    }
  }

  async function decide(action, labels) {
    const item = state.items[state.pos];
    if (!item || state.busy) return;
    if (!isOpen(item)) { say("#" + item.id + " is already " + item.status + " (u undoes)"); return; }
    state.busy = true;
    fail("");
    try {
      const body = { action };
      if (labels) body.labels = labels;
      const data = await api("POST", "/v1/review/items/" + item.id + "/decide", body);
      const d = data.decision;
      item.status = d.action;
      item.gold = d.gold;
      item.decision = d.id;
      state.counts = data.counts;
      state.history.push({ decision: d.id, id: item.id });
      say("#" + item.id + ": " + (d.action === "skipped" ? "skipped" : "labelled " + d.gold.join(", ")));
      advance();
    } catch (e) {
      if (e.status === 409) {
        item.status = "taken";
        advance();
      }
      fail(e.message);
    } finally {
      state.busy = false;
      render();
      $("current").focus();
    }
  }

  function pick(i) {
    const item = state.items[state.pos];
    if (!item) return;
    const info = taskInfo(item.task);
    const labels = info.labels.length ? info.labels : Object.keys(item.scores);
    const lab = labels[i];
    if (lab === undefined) return;
    if (info.kind === "multilabel") {
      if (state.toggled.has(lab)) state.toggled.delete(lab); else state.toggled.add(lab);
      render();
      $("current").focus();
      return;
    }
    decide("label", [lab]);
  }

  function enter() {
    const item = state.items[state.pos];
    if (!item) return;
    const info = taskInfo(item.task);
    if (info.kind === "multilabel" && state.toggled.size) {
      // in the task's label order, whatever order they were toggled in
      const order = info.labels.length ? info.labels : Object.keys(item.scores);
      decide("label", order.filter((lab) => state.toggled.has(lab)));
    } else {
      decide("accept");
    }
  }

  async function undo() {
    const last = state.history.pop();
    if (!last || state.busy) { say("nothing to undo"); return; }
    state.busy = true;
    fail("");
    try {
      const data = await api("POST", "/v1/review/decisions/" + last.decision + "/undo");
      const idx = state.items.findIndex((it) => it.id === last.id);
      if (idx >= 0) { state.items[idx] = data.item; state.pos = idx; }
      state.counts = data.counts;
      state.toggled.clear();
      say("#" + last.id + ": undone");
    } catch (e) {
      fail(e.message);
    } finally {
      state.busy = false;
      render();
      $("current").focus();
    }
  }

  async function bulkAccept() {
    const ids = Array.from(state.selected);
    if (!ids.length) { say("select rows with x first"); return; }
    fail("");
    try {
      const data = await api("POST", "/v1/review/bulk-accept", { ids });
      for (const d of data.accepted) {
        const item = state.items.find((it) => it.id === d.review_id);
        if (item) { item.status = "labelled"; item.gold = d.gold; item.decision = d.id; }
        state.history.push({ decision: d.id, id: d.review_id });
      }
      state.selected.clear();
      await refreshCounts();
      say("accepted " + data.accepted.length + (data.refused.length ?
        "; refused " + data.refused.length + ": " + data.refused.map((r) => r.message).join(" | ") : ""));
      advance();
    } catch (e) {
      fail(e.message);
    }
    render();
    $("current").focus();
  }

  async function refreshCounts() {
    const q = filters();
    q.set("limit", "1");
    const data = await api("GET", "/v1/review/items?" + q.toString());
    state.counts = data.counts;
  }

  function move(step) {
    if (!state.items.length) return;
    state.pos = Math.max(0, Math.min(state.items.length - 1, state.pos + step));
    state.toggled.clear();
    render();
  }

  function onKey(e) {
    const t = e.target;
    const tag = t && t.tagName;
    if (tag === "INPUT" || tag === "SELECT" || tag === "TEXTAREA") return;
    if (tag === "BUTTON" && (e.key === "Enter" || e.key === " ")) return;
    if (e.ctrlKey || e.metaKey || e.altKey) return;
    const k = e.key;
    if (k >= "1" && k <= "9") { e.preventDefault(); pick(Number(k) - 1); return; }
    switch (k) {
      case "Enter": e.preventDefault(); enter(); break;
      case "s": e.preventDefault(); decide("skip"); break;
      case "u": e.preventDefault(); undo(); break;
      case "j": case "ArrowDown": e.preventDefault(); move(1); break;
      case "k": case "ArrowUp": e.preventDefault(); move(-1); break;
      case "x": {
        e.preventDefault();
        const item = state.items[state.pos];
        if (item) {
          if (state.selected.has(item.id)) state.selected.delete(item.id);
          else state.selected.add(item.id);
          render();
        }
        break;
      }
      case "a": e.preventDefault(); bulkAccept(); break;
      case "r": e.preventDefault(); reload(); break;
      default: break;
    }
  }

  async function start() {
    document.addEventListener("keydown", onKey);
    for (const id of ["f-task", "f-status", "f-band", "f-route"]) {
      $(id).addEventListener("change", reload);
    }
    $("bulk").addEventListener("click", bulkAccept);
    $("keyform").addEventListener("submit", (e) => {
      e.preventDefault();
      state.key = $("apikey").value.trim();
      sessionStorage.setItem(KEY_STORE, state.key);
      $("apikey").value = "";
      $("keyform").hidden = true;
      reload().then(() => $("current").focus());
    });
    try {
      const resp = await fetch("/review/config", { cache: "no-store", credentials: "omit" });
      const cfg = await resp.json();
      state.auth = Boolean(cfg.auth_required);
    } catch (e) {
      fail("cannot reach the server: " + e.message);
      return;
    }
    if (state.auth && !state.key) { showKeyForm(); return; }
    await reload();
    $("current").focus();
  }

  document.addEventListener("DOMContentLoaded", start);
})();
