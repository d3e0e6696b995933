// The aioruntime emulator's dashboard: plain JavaScript, no build step, no dependencies.
//
// One EventSource on /dashboard/events. Each "state" frame carries the whole live picture
// (lanes, QPU, queue, sessions, latest jobs) and the timeline spans finished since the last
// frame; the server sends at most a few frames a second however busy it is. Between frames
// the page only moves time: the timeline scrolls and the clocks tick, from the last frame.
"use strict";

(() => {
  const COLOURS = { job: "#7f7f7f", batch: "#1f77b4", session: "#ff7f0e" };
  const STAGES = {
    pre: "pre-processing",
    wait: "waiting for the QPU",
    qpu: "on the QPU",
    post: "post-processing",
    done: "finishing",
  };
  const KEEP_S = 130; // spans kept for the widest timeline window
  const MAX_SPANS = 6000; // per backend, whatever the rate

  let state = null; // the last snapshot
  let offset = 0; // server epoch seconds minus this browser's
  const spans = new Map(); // backend -> [row, kind, start, end, job, mode]
  const reserved = new Map(); // backend -> [{owner, mode, start, end}]
  const cards = new Map(); // backend -> {root, parts...}
  // Canvas widths, kept as they change: reading clientWidth while drawing would force a layout.
  const widths = new WeakMap();
  const resized = new ResizeObserver((entries) => {
    for (const entry of entries) widths.set(entry.target, entry.contentRect.width);
  });

  const $ = (sel, root = document) => root.querySelector(sel);
  const serverNow = () => Date.now() / 1000 + offset;
  const esc = (text) =>
    String(text ?? "").replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
  const secs = (s) => (s == null ? "—" : s < 10 ? `${s.toFixed(2)} s` : s < 120 ? `${s.toFixed(1)} s` : `${Math.round(s)} s`);

  // -- the stream ------------------------------------------------------------------------

  function connect() {
    const source = new EventSource("/dashboard/events");
    source.addEventListener("open", () => setConnection("live", "live"));
    source.addEventListener("state", (event) => onFrame(JSON.parse(event.data)));
    source.addEventListener("error", () => {
      if (source.readyState === EventSource.CLOSED) {
        setConnection("lost", "disconnected, retrying…");
        setTimeout(connect, 3000);
      } else {
        setConnection("lost", "reconnecting…");
      }
    });
  }

  function setConnection(kind, text) {
    const pill = $("#connection");
    pill.dataset.state = kind;
    pill.textContent = text;
  }

  // What the page costs the browser, for the curious (and the load check): milliseconds spent
  // handling frames and drawing timelines, in total and at most.
  const stats = (window.dashboardStats = { frame: [0, 0, 0], draw: [0, 0, 0] });
  function note(what, ms) {
    const s = stats[what];
    s[0] += 1;
    s[1] += ms;
    s[2] = Math.max(s[2], ms);
  }

  let frames = 0;
  function onFrame(frame) {
    document.documentElement.dataset.frames = String(++frames); // for tests and the curious
    const started = performance.now();
    offset = frame.state.now - Date.now() / 1000;
    const cutoff = frame.state.now - KEEP_S;
    for (const [, backend, row, kind, start, end, job, mode] of frame.spans) {
      if (!spans.has(backend)) spans.set(backend, []);
      spans.get(backend).push([row, kind, start, end, job, mode]);
    }
    for (const [name, list] of spans) {
      let drop = 0;
      while (drop < list.length && (list[drop][3] < cutoff || list.length - drop > MAX_SPANS)) drop++;
      if (drop) spans.set(name, list.slice(drop));
    }
    trackReservations(frame.state);
    state = frame.state;
    render();
    note("frame", performance.now() - started);
  }

  // A session or batch that owns the QPU holds it between its jobs (its interactive TTL): the
  // timeline shows that window as a hatched band, from the frames that saw the owner.
  function trackReservations(st) {
    for (const b of st.backends) {
      if (!reserved.has(b.name)) reserved.set(b.name, []);
      const list = reserved.get(b.name);
      const last = list[list.length - 1];
      const open = last && last.end === null ? last : null;
      if (open && open.owner !== b.qpu.owner) open.end = st.now;
      if (b.qpu.owner && !(open && open.owner === b.qpu.owner)) {
        list.push({ owner: b.qpu.owner, mode: b.qpu.owner_mode, start: st.now, end: null });
      }
      while (list.length && list[0].end !== null && list[0].end < st.now - KEEP_S) list.shift();
    }
  }

  // -- the page --------------------------------------------------------------------------

  function render() {
    $("#clock").textContent = state.clock ? `clock ${state.clock.name}` : "";
    for (const b of state.backends) renderBackend(b);
    renderSessions();
    renderJobs();
    tick();
  }

  function card(b) {
    if (cards.has(b.name)) return cards.get(b.name);
    const root = document.createElement("article");
    root.className = "backend";
    root.dataset.testid = `backend-${b.name}`;
    root.innerHTML = `
      <div class="backend-head"><h2>${esc(b.name)}</h2>
        <span class="counts"></span><span class="paused pill" hidden>paused</span></div>
      <div class="queue"></div>
      <div class="live"></div>
      <canvas class="timeline" aria-label="timeline of ${esc(b.name)}"></canvas>`;
    $("#backends").appendChild(root);
    const parts = {
      root,
      counts: $(".counts", root),
      paused: $(".paused", root),
      queue: $(".queue", root),
      live: $(".live", root),
      canvas: $("canvas", root),
    };
    cards.set(b.name, parts);
    resized.observe(parts.canvas);
    return parts;
  }

  function renderBackend(b) {
    const c = card(b);
    c.counts.innerHTML =
      `<span>running <b>${b.running}</b></span><span>completed <b>${b.completed}</b></span>` +
      `<span>failed <b>${b.failed}</b></span><span>cancelled <b>${b.cancelled}</b></span>`;
    c.paused.hidden = !b.paused;
    c.queue.innerHTML =
      `<span>queue: <b data-testid="queue-${esc(b.name)}">${b.queued}</b> waiting for a lane</span>` +
      `<span><b>${b.qpu_waiting}</b> waiting for the QPU</span>` +
      `<span>lanes busy <b>${b.busy}</b> of ${b.width}</span>`;
    const lanes = new Map(b.lanes.map((l) => [l.row, l]));
    const rows = Math.max(b.width, b.rows);
    let html = qpuSlot(b);
    for (let row = 0; row < rows; row++) html += laneSlot(b.name, row, lanes.get(row));
    c.live.innerHTML = html;
  }

  function qpuSlot(b) {
    const q = b.qpu;
    let what = "idle";
    let cls = "";
    if (q.job) {
      cls = "busy";
      what = `<span class="id">${esc(q.job)}</span> · <span class="mode ${esc(q.mode)}">${esc(q.mode ?? "")}</span>`;
      if (q.since) what += ` · <span data-since="${q.since}"></span>`;
    } else if (q.owner) {
      cls = "reserved";
      what = `reserved for <span class="mode ${esc(q.owner_mode)}">${esc(q.owner_mode)}</span> <span class="id">${esc(q.owner)}</span>`;
    }
    if (q.job && q.owner) what += ` · owned by ${esc(q.owner_mode)} <span class="id">${esc(q.owner)}</span>`;
    return `<div class="slot qpu ${cls}" data-testid="qpu-${esc(b.name)}"><span class="name">QPU</span><span class="what">${what}</span></div>`;
  }

  function laneSlot(backend, row, lane) {
    let what = "free";
    if (lane) {
      what =
        `<span class="id">${esc(lane.job)}</span> · <span class="stage ${esc(lane.stage)}">${STAGES[lane.stage] ?? esc(lane.stage)}</span>` +
        ` <span data-since="${lane.since}"></span> · <span class="mode ${esc(lane.mode)}">${esc(lane.mode)}</span> ${esc(lane.program)}`;
    }
    return `<div class="slot lane ${lane ? "busy" : ""}" data-testid="lane-${esc(backend)}-${row}"><span class="name">lane ${row + 1}</span><span class="what">${what}</span></div>`;
  }

  function ttl(left, total, rate, frozenText) {
    if (left == null) return `${frozenText} · ${secs(total)}`;
    return `<span data-left="${left}" data-rate="${rate}"></span> of ${secs(total)}`;
  }

  function renderSessions() {
    const rate = state.clock ? state.clock.rate : 0;
    const rows = state.sessions.map((s) => {
      const stateText = s.state + (!s.accepting_jobs && s.state !== "closed" ? " · not accepting jobs" : "");
      return `<tr data-testid="session-${esc(s.id)}">
        <td class="id">${esc(s.id)}</td><td>${esc(s.backend)}</td>
        <td class="mode ${esc(s.mode)}">${esc(s.mode)}</td>
        <td class="state ${esc(s.state)}" title="${esc(s.reason)}">${esc(stateText)}</td>
        <td class="num">${s.pending}</td><td>${s.owns_qpu ? "owns the QPU" : "—"}</td>
        <td class="num">${ttl(s.interactive_left, s.interactive_ttl, rate, "not running")}</td>
        <td class="num">${ttl(s.max_left, s.max_ttl, rate, "not started")}</td>
        <td class="num">${secs(s.usage)}</td></tr>`;
    });
    $("#sessions tbody").innerHTML = rows.join("");
    $("#no-sessions").hidden = rows.length > 0;
  }

  function renderJobs() {
    const rows = state.jobs.map((j) => {
      let duration;
      if (j.finished != null) duration = secs(j.finished - (j.running ?? j.created));
      else if (j.running != null) duration = `<span data-since="${j.running}"></span>`;
      else duration = `queued <span data-since="${j.created}"></span>`;
      return `<tr data-testid="job-${esc(j.id)}">
        <td class="id">${esc(j.id)}</td><td>${esc(j.backend)}</td><td>${esc(j.program)}</td>
        <td class="mode ${esc(j.mode)}">${esc(j.mode)}</td>
        <td class="state ${esc(j.state)}" title="${esc(j.reason)}">${esc(j.state)}</td>
        <td>${j.stage ? STAGES[j.stage] ?? esc(j.stage) : ""}</td>
        <td class="num">${duration}</td></tr>`;
    });
    $("#jobs tbody").innerHTML = rows.join("");
    $("#no-jobs").hidden = rows.length > 0;
  }

  // -- time moves between frames ---------------------------------------------------------

  function tick() {
    if (!state) return;
    const now = serverNow();
    for (const el of document.querySelectorAll("[data-since]")) {
      el.textContent = secs(Math.max(0, now - Number(el.dataset.since)));
    }
    const elapsed = Math.max(0, now - state.now);
    for (const el of document.querySelectorAll("[data-left]")) {
      el.textContent = secs(Math.max(0, Number(el.dataset.left) - elapsed * Number(el.dataset.rate)));
    }
  }

  let lastDraw = 0;
  function animate(ms) {
    if (state && ms - lastDraw > 50) {
      lastDraw = ms;
      const started = performance.now();
      for (const b of state.backends) drawTimeline(b);
      note("draw", performance.now() - started);
    }
    requestAnimationFrame(animate);
  }

  function drawTimeline(b) {
    const canvas = cards.get(b.name)?.canvas;
    if (!canvas) return;
    const rows = Math.max(b.width, b.rows);
    const rowH = 18;
    const axisH = 16;
    const dpr = window.devicePixelRatio || 1;
    const width = widths.get(canvas) ?? canvas.clientWidth;
    const height = (rows + 1) * rowH + axisH;
    if (canvas.width !== Math.round(width * dpr) || canvas.height !== Math.round(height * dpr)) {
      canvas.width = Math.round(width * dpr);
      canvas.height = Math.round(height * dpr);
      canvas.style.height = `${height}px`;
    }
    const ctx = canvas.getContext("2d");
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, width, height);
    const windowS = Number($("#window").value);
    const now = serverNow();
    const t0 = now - windowS;
    const left = 56;
    const x = (t) => left + ((t - t0) / windowS) * (width - left - 4);
    const y = (row) => (row < 0 ? 0 : (row + 1) * rowH); // the QPU (row -1) on top

    ctx.font = "11px system-ui, sans-serif";
    ctx.textBaseline = "middle";
    for (let r = -1; r < rows; r++) {
      ctx.fillStyle = r < 0 ? "#f3efe9" : r % 2 ? "#fafbfc" : "#f3f5f8";
      ctx.fillRect(left, y(r), width - left, rowH);
      ctx.fillStyle = "#6b7380";
      ctx.fillText(r < 0 ? "QPU" : `lane ${r + 1}`, 4, y(r) + rowH / 2);
    }
    for (const band of reserved.get(b.name) ?? []) {
      const end = band.end ?? now;
      if (end < t0) continue;
      ctx.fillStyle = hatch(ctx, COLOURS[band.mode] ?? "#999");
      ctx.fillRect(x(Math.max(band.start, t0)), y(-1) + 1, x(end) - x(Math.max(band.start, t0)), rowH - 2);
    }
    // One path per look (mode and kind), filled once: thousands of spans cost a few fills.
    const paths = new Map();
    const add = (row, kind, start, end, mode) => {
      if (end < t0) return;
      const key = `${mode}|${kind}`;
      if (!paths.has(key)) paths.set(key, new Path2D());
      const x0 = x(Math.max(start, t0));
      const w = Math.max(1, x(end) - x0);
      if (kind === "wait") paths.get(key).rect(x0, y(row) + rowH * 0.42, w, rowH * 0.16);
      else paths.get(key).rect(x0, y(row) + 2, w, rowH - 4);
    };
    for (const [row, kind, start, end, , mode] of spans.get(b.name) ?? []) add(row, kind, start, end, mode);
    for (const lane of b.lanes) {
      if (lane.stage === "qpu") add(-1, "qpu", lane.since, now, lane.mode);
      else if (lane.stage !== "done") add(lane.row, lane.stage, lane.since, now, lane.mode);
    }
    const ALPHA = { wait: 0.35, pre: 0.45, qpu: 0.9, post: 0.9 };
    for (const [key, path] of paths) {
      const [mode, kind] = key.split("|");
      ctx.globalAlpha = ALPHA[kind] ?? 0.9;
      ctx.fillStyle = COLOURS[mode] ?? "#2ca02c";
      ctx.fill(path);
      if (kind === "qpu") {
        ctx.globalAlpha = 1;
        ctx.strokeStyle = "#000";
        ctx.lineWidth = 0.8;
        ctx.stroke(path);
      }
    }
    ctx.globalAlpha = 1;
    ctx.fillStyle = "#6b7380";
    ctx.textBaseline = "top";
    const step = windowS <= 10 ? 2 : windowS <= 30 ? 5 : 20;
    for (let s = 0; s <= windowS; s += step) {
      const tx = x(now - s);
      ctx.fillRect(tx, (rows + 1) * rowH, 1, 4);
      ctx.fillText(s === 0 ? "now" : `-${s} s`, Math.min(tx - 8, width - 28), (rows + 1) * rowH + 4);
    }
  }

  const hatches = new Map();
  function hatch(ctx, colour) {
    if (hatches.has(colour)) return hatches.get(colour);
    const tile = document.createElement("canvas");
    tile.width = tile.height = 8;
    const t = tile.getContext("2d");
    t.strokeStyle = colour;
    t.globalAlpha = 0.5;
    t.beginPath();
    t.moveTo(0, 8);
    t.lineTo(8, 0);
    t.stroke();
    const pattern = ctx.createPattern(tile, "repeat");
    hatches.set(colour, pattern);
    return pattern;
  }

  document.addEventListener("DOMContentLoaded", () => {
    connect();
    setInterval(tick, 250);
    requestAnimationFrame(animate);
  });
})();
