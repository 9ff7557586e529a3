// The dashboard's task table with its pager, in the browser (an anywidget view).
//
// The kernel renders the rows of the page being looked at (`html`: a table whose rows
// carry `data-task`, the task's name) and says which page it is (`page`, `pages`,
// `label`). This view adds the pager buttons and lets a click on a row (or Enter on a
// focused row) pick its task: it sets `selected` (and `page` for the buttons), and the
// kernel answers with the new page or the picked row highlighted.

function button(text, title) {
  const b = document.createElement("button");
  b.className = "jupyter-button ipytasks-page";
  b.textContent = text;
  b.title = title;
  b.style.width = "36px";
  return b;
}

function render({ model, el }) {
  const bar = document.createElement("div");
  bar.className = "ipytasks-pager";
  bar.style.cssText = "display:flex;align-items:center;gap:6px;margin:2px 0;" +
                      "font-family:sans-serif;font-size:12px";
  const prev = button("◀", "previous page");
  const next = button("▶", "next page");
  const label = document.createElement("span");
  label.className = "ipytasks-page-label";
  const picked = document.createElement("span");
  picked.className = "ipytasks-picked";
  picked.style.color = "#57606a";
  bar.append(prev, label, next, picked);
  const box = document.createElement("div");
  box.className = "ipytasks-table";
  box.style.overflow = "auto";
  el.append(bar, box);

  const turn = (step) => {
    model.set("page", model.get("page") + step);
    model.save_changes();
  };
  prev.addEventListener("click", () => turn(-1));
  next.addEventListener("click", () => turn(1));
  const pick = (row) => {
    if (row && row.dataset.task !== undefined && row.dataset.task !== model.get("selected")) {
      model.set("selected", row.dataset.task);
      model.save_changes();
    }
  };
  box.addEventListener("click", (event) => pick(event.target.closest("tr[data-task]")));
  box.addEventListener("keydown", (event) => {
    if (event.key === "Enter" || event.key === " ") {
      event.preventDefault();
      pick(event.target.closest("tr[data-task]"));
    }
  });

  const draw = () => {
    const page = model.get("page");
    label.textContent = model.get("label");
    prev.disabled = page <= 0;
    next.disabled = page >= model.get("pages") - 1;
    const selected = model.get("selected");
    picked.textContent = selected ? `· picked: ${selected}` : "· click a row to pick its task";
    box.innerHTML = model.get("html");
    for (const row of box.querySelectorAll("tr[data-task]")) {
      row.tabIndex = 0;
      row.style.cursor = "pointer";
    }
  };
  // One redraw for all the traits one message changed.
  let queued = false;
  const request = () => {
    if (!queued) {
      queued = true;
      queueMicrotask(() => { queued = false; draw(); });
    }
  };
  draw();
  const traits = ["html", "label", "page", "pages", "selected"];
  for (const name of traits) model.on(`change:${name}`, request);
  return () => {
    for (const name of traits) model.off(`change:${name}`, request);
  };
}

export default { render };
