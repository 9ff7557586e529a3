// The dashboard's view of its tasks, in the browser (an anywidget view; TasksView in
// widgets.py): the summary line, the live timeline, and the task table with its filter
// and pager.
//
// `summary`: HTML made by the kernel (counts per state, work against wall time).
// `table`: `html`, the rows of the table's current page, made by the kernel, each row's
// `data-task` its task's name; `label` and `pages`, and `page`: where that page is; `show`,
// `filters`: which tasks the table lists, and the choices; `selected`: the picked task.
// Only the kernel sets them. What the user does goes to the kernel as an event, a custom
// message `{event, value}`: `show` (the filter), `page` (the pager's buttons), `selected`
// (a click on a row, or Enter on a focused one, picks its task for the actions), `sort`
// (a click on a header that has a `data-sort`: the column to sort by, again to turn the
// order round); the kernel answers with the new state. Not `model.set`: the widget manager sends a model's
// next state update only once the kernel said idle for the previous one, which
// ipykernel 7 never says for a message handled while an `await` cell runs.
//
// For the timeline the kernel sends numbers, not markup, in `timeline`: `names`, one
// task name per line in submission order (UTF-8 bytes); `rows`, float64 little-endian in five columns
// of n values (submitted, started, ended as epoch seconds, NaN when not yet; the state's
// index in `states`; the mode's index in `modes`); `t0` and `now` in epoch seconds;
// `total`, the number of tasks (past `labelled` the timeline is packed: a bar for each task
// that started, the others counted).
// Above the table the view shows the timeline or, once the user picks it with the `graph`
// button (an event `panel`, answered by the kernel's `panel`), the task graph: `graph.svg`,
// drawn by the kernel (graph.py, the same picture `%tasks --graph` saves), with
// `graph.names` and `graph.notes` per box; `graph_states` holds each box's state number,
// sent alone when only states changed. The view recolours the boxes by it, outlines the
// picked task's box, and a click on a box (or Enter on a focused one) picks its task, as a
// row does.
//
// The layout is that of the SVG files ipytasks writes (timeline.py): up to `labelled`
// tasks one lane each, labelled, with a dashed line for their wait; beyond, packed first
// fit by start time into as few lanes as hold them; idle stretches shaded; every bar
// names its task when hovered.

const WIDTH = 760;
const MAX_HEIGHT = 360;
const IDLE_FILL = "#eaeef2";
const GRID = "#d0d7de";
const TEXT = "#57606a";

function esc(text) {
  return String(text).replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");
}

function seconds(v) {
  if (v < 1) return v > 0 ? `${v.toFixed(2)} s` : "0.00 s";
  if (v < 60) return `${v.toFixed(1)} s`;
  if (v < 3600) {
    const r = Math.round(v);
    return `${Math.floor(r / 60)} min ${String(r % 60).padStart(2, "0")} s`;
  }
  const r = Math.round(v);
  return `${Math.floor(r / 3600)} h ${String(Math.floor((r % 3600) / 60)).padStart(2, "0")} min`;
}

function offset(v) {
  if (v < 60) return v > 0 ? `+${v.toFixed(2)} s` : "+0.00 s";
  return `+${seconds(v)}`;
}

function num(v) {
  return String(Math.round(v * 10) / 10);
}

// A packed timeline's lane labels: lane k holds the k-th task running at once, so its number
// is how many ran together there. Every `step` lanes (1, 2, 5, 10…), at least 12 px apart.
export function laneLabels(lanes, rowH) {
  const least = Math.ceil(12 / rowH);
  const step = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000]
    .find((s) => s >= least) || least;
  const out = [];
  for (let k = 1; k <= lanes; k += k === 1 && step > 1 ? step - 1 : step) out.push(k);
  return out;
}

// A binary heap of numbers or [key, value] pairs, smallest first.
class Heap {
  constructor(less) { this.items = []; this.less = less; }
  get size() { return this.items.length; }
  peek() { return this.items[0]; }
  push(item) {
    const a = this.items;
    a.push(item);
    let i = a.length - 1;
    while (i > 0) {
      const p = (i - 1) >> 1;
      if (!this.less(a[i], a[p])) break;
      [a[i], a[p]] = [a[p], a[i]];
      i = p;
    }
  }
  pop() {
    const a = this.items;
    const top = a[0];
    const last = a.pop();
    if (a.length) {
      a[0] = last;
      let i = 0;
      for (;;) {
        const l = 2 * i + 1, r = l + 1;
        let m = i;
        if (l < a.length && this.less(a[l], a[m])) m = l;
        if (r < a.length && this.less(a[r], a[m])) m = r;
        if (m === i) break;
        [a[i], a[m]] = [a[m], a[i]];
        i = m;
      }
    }
    return top;
  }
}

function ticks(span) {
  const raw = span / 6;
  const magnitude = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((m) => m * magnitude).find((s) => s >= raw);
  const out = [];
  for (let i = 0; i <= Math.floor(span / step + 1e-9); i++) out.push(i * step);
  return [out, step];
}

function tickLabel(value, step) {
  if (step >= 60) return `${+(value / 60).toFixed(6)} min`;
  const digits = step < 1 ? Math.max(0, -Math.floor(Math.log10(step))) : 0;
  return `${value.toFixed(digits)} s`;
}

function title(task, states) {
  const [state, , ] = states[task.code];
  const head = `${task.name}: ${state}`;
  const running = state === "running";
  if (Number.isNaN(task.start)) {
    if (!Number.isNaN(task.ended)) {
      return `${head}\nnever ran (submitted ${offset(task.sub)}, ended ${offset(task.ended)})`;
    }
    return `${head}\nwaiting since ${offset(task.sub)}`;
  }
  const took = seconds(task.end - task.start);
  if (running) {
    return `${head} (${task.mode})\nstarted ${offset(task.start)}, running for ${took}`;
  }
  return `${head} (${task.mode})\n${offset(task.start)} to ${offset(task.end)} (${took})`;
}

// Everything the view draws, from the model's numbers.
export function layout(names, rows, modes, t0, now, states, labelled, total) {
  const text = names && names.byteLength ? new TextDecoder().decode(names) : "";
  const lines = text ? text.split("\n") : [];
  const n = lines.length;
  if (!n || rows.byteLength < 40 * n) return null;
  const at = (i) => rows.getFloat64(8 * i, true);
  const tasks = [];
  let allEnded = true;
  let last = -Infinity;
  for (let i = 0; i < n; i++) {
    const name = lines[i];
    const mode = modes[at(4 * n + i) | 0] || "";
    const ended = at(2 * n + i) - t0;
    const end = Number.isNaN(ended) ? now - t0 : ended;
    if (Number.isNaN(ended)) allEnded = false;
    last = Math.max(last, end);
    tasks.push({
      i, name, mode, sub: at(i) - t0, start: at(n + i) - t0, ended, end,
      code: at(3 * n + i) | 0, lane: i,
    });
  }
  const span = Math.max(allEnded ? last : Math.max(last, now - t0), 1e-3);
  const packed = Math.max(n, total) > labelled;
  let lanes = n;
  let bars = tasks;
  let omitted = 0;
  if (packed) {
    // First fit by start time: a lane is free again once its last task ended.
    bars = tasks.filter((t) => !Number.isNaN(t.start));
    bars.sort((a, b) => a.start - b.start || a.i - b.i);
    omitted = Math.max(n, total) - bars.length;
    const free = new Heap((a, b) => a < b);
    const busy = new Heap((a, b) => a[0] < b[0] || (a[0] === b[0] && a[1] < b[1]));
    lanes = 0;
    for (const bar of bars) {
      while (busy.size && busy.peek()[0] <= bar.start) free.push(busy.pop()[1]);
      bar.lane = free.size ? free.pop() : lanes++;
      busy.push([bar.end, bar.lane]);
    }
  }
  // Idle: stretches between the first start and the last end where no task ran.
  const spans = bars.filter((t) => !Number.isNaN(t.start)).map((t) => [t.start, t.end]);
  if (!packed) spans.sort((a, b) => a[0] - b[0]);
  const idle = [];
  if (spans.length) {
    let reach = spans[0][1];
    for (const [start, end] of spans.slice(1)) {
      if (start > reach + span * 0.002) idle.push([reach, start]);
      reach = Math.max(reach, end);
    }
  }
  const running = tasks.some((t) => states[t.code][0] === "running");
  return { tasks, bars, lanes, packed, omitted, span, idle, running, now: now - t0 };
}

export function svg(model) {
  const states = model.get("states");
  const { names, rows, modes, t0, total } = model.get("timeline");
  const view = rows && layout(names, rows, modes, t0, model.get("now"), states,
                              model.get("labelled"), total);
  if (!view) return "";
  const { bars, packed, omitted, span, idle, running } = view;
  const lanes = Math.max(view.lanes, 1);
  let labelW, rowH;
  if (packed) {
    labelW = 12 + 7 * String(lanes).length;
    rowH = Math.min(16, Math.max(MAX_HEIGHT / lanes, 0.5));
  } else {
    const longest = Math.max(4, ...view.tasks.map((t) => t.name.length));
    labelW = Math.min(8 + 7 * (Math.min(longest, 24) + 2), 200);
    rowH = 16;
  }
  const top = 4;
  const plotH = lanes * rowH;
  const height = top + plotH + 22 + (packed && omitted ? 14 : 0);
  const plotW = WIDTH - labelW - 20;
  const scale = plotW / span;
  const x = (t) => labelW + Math.min(Math.max(t, 0), span) * scale;
  const out = [
    `<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 ${WIDTH} ${num(height)}" ` +
    `width="${WIDTH}" height="${num(height)}" style="max-width:100%;height:auto" ` +
    `font-family="sans-serif" font-size="11" role="img" ` +
    `aria-label="timeline of ${bars.length} tasks">`,
  ];
  for (const [a, b] of idle) {
    const what = `idle ${seconds(b - a)} (${offset(a)} to ${offset(b)})`;
    out.push(`<rect x="${num(x(a))}" y="${top}" width="${num((b - a) * scale)}" ` +
             `height="${num(plotH)}" fill="${IDLE_FILL}"><title>${what}</title></rect>`);
  }
  const barH = Math.max(rowH * 0.7, 0.5);
  for (const bar of bars) {
    if (Number.isNaN(bar.start)) continue;
    const [, , colour] = states[bar.code];
    const x0 = x(bar.start);
    const w = Math.max(x(bar.end) - x0, 1);
    const y = top + bar.lane * rowH + (rowH - barH) / 2;
    out.push(`<rect class="ipytasks-bar" x="${x0.toFixed(2)}" y="${y.toFixed(2)}" ` +
             `width="${w.toFixed(2)}" height="${barH.toFixed(2)}" fill="${colour}">` +
             `<title>${esc(title(bar, states))}</title></rect>`);
  }
  const [marks, step] = ticks(span);
  for (const tick of marks) {
    const tx = num(x(tick));
    out.push(`<line x1="${tx}" x2="${tx}" y1="${top}" y2="${num(top + plotH + 3)}" ` +
             `stroke="${GRID}" stroke-width="0.5"/>` +
             `<text x="${tx}" y="${num(top + plotH + 15)}" text-anchor="middle" ` +
             `fill="${TEXT}">${tickLabel(tick, step)}</text>`);
  }
  if (running) {
    const nx = num(x(view.now));
    out.push(`<line x1="${nx}" x2="${nx}" y1="${top}" y2="${num(top + plotH)}" stroke="${TEXT}" ` +
             `stroke-dasharray="2 2"><title>now</title></line>`);
  }
  if (!packed) {
    for (const bar of bars) {
      const [, icon, colour] = states[bar.code];
      const text = esc(title(bar, states));
      const ly = num(top + bar.lane * rowH + rowH / 2);
      const until = Number.isNaN(bar.start) ? bar.end : bar.start;
      if (until - bar.sub > 1e-6) {
        out.push(`<line x1="${num(x(bar.sub))}" x2="${num(x(until))}" y1="${ly}" y2="${ly}" ` +
                 `stroke="${colour}" ` +
                 `stroke-width="1.5" stroke-dasharray="3 2"><title>${text}</title></line>`);
      }
      const name = bar.name.length <= 24 ? bar.name : `${bar.name.slice(0, 23)}…`;
      const ty = num(top + bar.lane * rowH + rowH * 0.72);
      out.push(`<text x="${labelW - 6}" y="${ty}" text-anchor="end" ` +
               `fill="${colour}">${icon} ${esc(name)}<title>${text}</title></text>`);
    }
  }
  if (packed) {
    // As LANE_TITLE in timeline.py (first fit: a bar takes the lowest free lane).
    const what = "lane %: % tasks ran at once when a bar here started";
    for (const k of laneLabels(lanes, rowH)) {
      out.push(`<text class="ipytasks-lane" x="${labelW - 6}" ` +
               `y="${num(top + (k - 1) * rowH + Math.min(rowH, 12) * 0.8)}" ` +
               `text-anchor="end" fill="${TEXT}">${k}` +
               `<title>${what.replaceAll("%", k)}</title></text>`);
    }
  }
  if (packed && omitted) {
    out.push(`<text x="${WIDTH - 20}" y="${num(top + plotH + 31)}" text-anchor="end" ` +
             `fill="${TEXT}">` +
             `+${omitted} not started</text>`);
  }
  out.push("</svg>");
  return out.join("");
}

// The graph's boxes in their tasks' states, the picked one outlined.
export function paintGraph(el, model) {
  const states = model.get("states");
  const { names = [], notes = [] } = model.get("graph") || {};
  const codes = model.get("graph_states") || [];
  const selected = model.get("selected");
  const boxes = el.querySelectorAll("g.ipytasks-node");
  boxes.forEach((box, i) => {
    const entry = states[codes[i]];
    if (entry && names[i] === box.dataset.task) {
      const [state, icon, colour] = entry;
      box.dataset.state = state;
      const rect = box.querySelector("rect");
      rect.setAttribute("fill", colour);
      rect.setAttribute("stroke", colour);
      const mark = box.querySelector(".ipytasks-icon");
      if (mark) {
        mark.textContent = icon;
        mark.setAttribute("fill", colour);
      }
      const items = notes[i] ? ` (${notes[i].slice(1)} items)` : "";
      const title = box.querySelector("title");
      if (title) title.textContent = `${names[i]}: ${state.replaceAll("_", " ")}${items}`;
    }
    const picked = box.dataset.task === selected;
    box.querySelector("rect").setAttribute("stroke-width", picked ? "3.5" : "1.5");
    box.classList.toggle("ipytasks-picked-node", picked);
  });
}

function button(text, title) {
  const b = document.createElement("button");
  b.className = "jupyter-button ipytasks-page";
  b.textContent = text;
  b.title = title;
  b.style.width = "36px";
  return b;
}

// The summary line, the timeline, and the task table with its filter and pager.
function render({ model, el }) {
  const summary = document.createElement("div");
  summary.className = "ipytasks-summary";
  const timeline = document.createElement("div");
  timeline.className = "ipytasks-timeline";
  timeline.style.overflow = "auto";
  timeline.style.maxHeight = "400px";

  const bar = document.createElement("div");
  bar.className = "ipytasks-pager";
  bar.style.cssText = "display:flex;align-items:center;gap:6px;margin:2px 0;" +
                      "font-family:sans-serif;font-size:12px";
  const showLabel = document.createElement("label");
  showLabel.textContent = "show ";
  const show = document.createElement("select");
  show.className = "ipytasks-show";
  show.title = "which tasks the table lists";
  showLabel.append(show);
  const prev = button("◀", "previous page");
  const next = button("▶", "next page");
  const label = document.createElement("span");
  label.className = "ipytasks-page-label";
  const picked = document.createElement("span");
  picked.className = "ipytasks-picked";
  picked.style.color = TEXT;
  bar.append(showLabel, prev, label, next, picked);
  const table = document.createElement("div");
  table.className = "ipytasks-table";
  table.style.overflow = "auto";
  // The timeline or the task graph: two buttons, the one shown pressed.
  const panels = document.createElement("div");
  panels.className = "ipytasks-panels";
  panels.style.cssText = "display:flex;gap:4px;margin:2px 0;font-family:sans-serif;font-size:12px";
  const panelButtons = ["timeline", "graph"].map((name) => {
    const b = document.createElement("button");
    b.className = "jupyter-button ipytasks-panel";
    b.textContent = name;
    b.dataset.panel = name;
    b.title = name === "graph" ? "show the task graph: what waits for what, and why"
                               : "show the timeline of the tasks";
    b.addEventListener("click", () => {
      if (model.get("panel") !== name) model.send({ event: "panel", value: name });
    });
    return b;
  });
  panels.append(...panelButtons);
  const graph = document.createElement("div");
  let drawnGraph = null;
  graph.className = "ipytasks-graph-live";
  graph.style.overflow = "auto";
  graph.style.maxHeight = "400px";
  el.append(summary, panels, timeline, graph, bar, table);

  // What the user does is sent to the kernel, which answers with what to show.
  const send = (event, value) => model.send({ event, value });
  show.addEventListener("change", () => send("show", show.value));
  prev.addEventListener("click", () => send("page", model.get("page") - 1));
  next.addEventListener("click", () => send("page", model.get("page") + 1));
  const pick = (row) => {
    if (row && row.dataset.task !== model.get("selected")) send("selected", row.dataset.task);
  };
  table.addEventListener("click", (event) => {
    const head = event.target.closest("th[data-sort]");
    if (head) send("sort", head.dataset.sort);
    else pick(event.target.closest("tr[data-task]"));
  });
  table.addEventListener("keydown", (event) => {
    if (event.key === "Enter" || event.key === " ") {
      event.preventDefault();
      pick(event.target.closest("tr[data-task]"));
    }
  });
  graph.addEventListener("click", (event) => pick(event.target.closest("g.ipytasks-node")));
  graph.addEventListener("keydown", (event) => {
    if (event.key === "Enter" || event.key === " ") {
      event.preventDefault();
      pick(event.target.closest("g.ipytasks-node"));
    }
  });

  const parts = {
    summary: () => { summary.innerHTML = model.get("summary"); },
    timeline: () => { timeline.innerHTML = svg(model); },
    table: () => {
      const filters = model.get("filters");
      if (show.options.length !== filters.length) {
        show.replaceChildren(...filters.map((f) => new Option(f.replaceAll("_", " "), f)));
      }
      show.value = model.get("show");
      const { html, label: where, pages } = model.get("table");
      const page = model.get("page");
      label.textContent = where || "";
      prev.disabled = page <= 0;
      next.disabled = page >= (pages || 1) - 1;
      const selected = model.get("selected");
      picked.textContent = selected ? `· picked: ${selected}` : "· click a row to pick its task";
      table.innerHTML = html || "";
      for (const row of table.querySelectorAll("tr[data-task]")) {
        row.tabIndex = 0;
        row.style.cursor = "pointer";
      }
    },
    panel: () => {
      const shown = model.get("panel") || "timeline";
      timeline.style.display = shown === "timeline" ? "" : "none";
      graph.style.display = shown === "graph" ? "" : "none";
      for (const b of panelButtons) {
        const on = b.dataset.panel === shown;
        b.classList.toggle("mod-active", on);
        b.setAttribute("aria-pressed", String(on));
        b.style.fontWeight = on ? "bold" : "";
      }
    },
    graph: () => {
      const svg = (model.get("graph") || {}).svg || "";
      if (drawnGraph !== svg) {  // a task or an edge was added: the kernel drew it anew
        graph.innerHTML = svg;
        drawnGraph = svg;
        for (const box of graph.querySelectorAll("g.ipytasks-node")) {
          box.setAttribute("tabindex", "0");
          box.style.cursor = "pointer";
        }
      }
      paintGraph(graph, model);
    },
  };
  // Which part each trait belongs to; a message changes several traits at once, so each
  // part is redrawn once, at the next frame.
  const owner = {
    summary: ["summary"],
    timeline: ["timeline"], now: ["timeline"],
    table: ["table"], page: ["table"], selected: ["table", "graph"], show: ["table"],
    filters: ["table"],
    panel: ["panel"], graph: ["graph"], graph_states: ["graph"], states: ["graph"],
  };
  const due = new Set();
  const drawDue = () => {
    for (const part of due) parts[part]();
    due.clear();
  };
  const handlers = Object.entries(owner).map(([trait, owners]) => {
    const handler = () => {
      if (!due.size) requestAnimationFrame(drawDue);
      for (const part of owners) due.add(part);
    };
    model.on(`change:${trait}`, handler);
    return [trait, handler];
  });
  for (const part of Object.values(parts)) part();
  return () => {
    for (const [trait, handler] of handlers) model.off(`change:${trait}`, handler);
  };
}

export default { render };
