// Trained models: their metrics, download, search.
import { allPages, apiKey, send } from "../api.js";
import { bytes, h, pct, replace, table, when } from "../dom.js";
import { UI, showError, start } from "../page.js";

// With an API key the file must come through fetch() (a link cannot send the header).
async function download(path, name, event) {
  if (!apiKey()) return;
  event.preventDefault();
  try {
    const response = await send(path);
    if (!response.ok) throw new Error(`download failed: HTTP ${response.status}`);
    const url = URL.createObjectURL(await response.blob());
    const a = h("a", { href: url, download: name });
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10_000);
  } catch (error) {
    showError(error);
  }
}

function downloadLink(path, name, text) {
  return h("a", { href: path, download: name, onclick: (e) => download(path, name, e) }, text);
}

start("models", async (content) => {
  const models = await allPages("/models");
  replace(content, models.length
    ? table(["Model", "Job", "Architecture", "Input", "Dim", "mAP", "Rank-1", "Size", "Created", ""], models.map((m) =>
        h("tr", { id: `model-${m.id}` },
          h("td", {}, `#${m.id}`),
          h("td", {}, h("a", { href: `${UI}/jobs/${m.job_id}` }, `#${m.job_id}`)),
          h("td", {}, m.arch),
          h("td", {}, `${m.height}×${m.width}`),
          h("td", { class: "num" }, String(m.feature_dim)),
          h("td", { class: "num" }, pct(m.metrics?.mAP)),
          h("td", { class: "num" }, pct(m.metrics?.rank1)),
          h("td", { class: "num" }, bytes(m.size_bytes)),
          h("td", {}, when(m.created_at)),
          h("td", {},
            downloadLink(m.download_url, `model-${m.id}.pt`, "Download"), " ",
            downloadLink(m.onnx_url, `model-${m.id}.onnx`, "ONNX"), " ",
            h("a", { href: `${UI}/search?model_id=${m.id}` }, "Search")))))
    : h("p", { class: "muted" }, "No model yet: a job that succeeds adds one."));
});
