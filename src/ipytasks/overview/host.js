// The dashboard's live view, placed beside the cell's saved snapshot.
//
// The host is a small widget of its own. It renders the dashboard (another widget) in
// a node it puts next to its own output, then tells the kernel, which retires the
// host's output (an empty widget reference, which front ends hide). So the notebook
// saves no reference to a live widget (reopened without the kernel it would read
// "model not found"), only the snapshot, which the live view hides while it runs.

function hideSnapshot(key) {
  const style = document.createElement("style");
  style.textContent = `[data-ipytasks-dashboard="${key}"] { display: none; }`;
  return style;
}

export default {
  async render({ model, el }) {
    const manager = model.widget_manager;
    const dashboard = await manager.get_model(model.get("target"));
    const view = await manager.create_view(dashboard);
    const place = document.createElement("div");
    place.className = "ipytasks-live";
    place.appendChild(hideSnapshot(model.get("key")));
    place.appendChild(view.el);
    // The view goes when the dashboard is closed or the kernel goes away; so does
    // the style that hides the snapshot.
    view.once("remove", () => place.remove());
    const output = el.closest(".jp-OutputArea-output");
    if (output && output.parentElement) {
      output.after(place);
      model.send({ event: "placed" });
    } else {
      // A front end whose output areas look different: the view stays inside.
      el.appendChild(place);
    }
  },
};
