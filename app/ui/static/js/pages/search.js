// Search: a model and index, query images (dropped files, or thumbnails clicked in a
// collection), filters; one ranked row of thumbnails per query, same-identity hits marked
// when the query's identity is known.
import { allPages, api } from "../api.js";
import { h, label, query, replace } from "../dom.js";
import { gallery } from "../gallery.js";
import { fileThumb, thumb } from "../images.js";
import { start } from "../page.js";

const queries = []; // {kind: "file", file} | {kind: "stored", image: {id, url, pid, camid, path}}

function numberField(name, text, attrs = {}) {
  return h("label", { class: "field" }, `${text} `, h("input", { type: "number", name, id: `f-${name}`, class: "narrow", "data-loc": `body.${name}`, ...attrs }));
}

function hitTile(hit, q) {
  const same = q.pid !== null && q.pid !== undefined && hit.pid === q.pid;
  const where = [label(hit.pid, hit.camid), hit.split].filter(Boolean).join(" · ");
  const score = `${same ? "✓ " : ""}${hit.score.toFixed(3)}`;
  return h("figure", { class: `tile${same ? " match" : ""}`, title: `${score} · ${where}${same ? " (same identity)" : ""}`, dataset: { imageId: hit.image_id, score: hit.score } },
    thumb(hit.url, `image ${hit.image_id}`),
    h("figcaption", {}, h("b", {}, score), h("br"), where));
}

// q: one query, or (tracklet) the first of `count` queries ranked as one person
function resultRow(q, hits, count = 1) {
  const queryTile = q.kind === "file" ? fileThumb(q.file) : thumb(q.image.url, q.image.path);
  const name = q.kind === "file" ? q.file.name : `${q.image.path}${q.image.pid !== null ? ` (id ${q.image.pid})` : ""}`;
  const title = count > 1 ? `tracklet of ${count} images, from ${name}` : name;
  const known = q.kind === "stored" && q.image.pid !== null;
  const matches = known ? hits.filter((hit) => hit.pid === q.image.pid).length : null;
  return h("section", { class: "result-row" },
    h("h3", {}, title, matches === null ? "" : ` — ${matches} of ${hits.length} hits share its identity`),
    h("div", { class: "hits" },
      h("figure", { class: "tile query" }, queryTile, h("figcaption", {}, "query")),
      hits.length ? hits.map((hit) => hitTile(hit, { pid: known ? q.image.pid : null })) : h("p", { class: "muted" }, "No hit passes the filters.")));
}

start("search", async (content) => {
  const models = await allPages("/models");
  const datasets = await allPages("/datasets");
  const modelSelect = h("select", { id: "model", "data-loc": "body.model_id" },
    models.map((m) => h("option", { value: m.id }, `model #${m.id} (job #${m.job_id}, ${m.arch}${typeof m.metrics?.mAP === "number" ? `, mAP ${(100 * m.metrics.mAP).toFixed(1)}%` : ""})`)));
  const indexSelect = h("select", { id: "index", "data-loc": "body.index_id" });
  const names = new Map(datasets.map((d) => [d.id, d.name]));

  async function loadIndexes(preferred) {
    const indexes = modelSelect.value ? await allPages("/indexes", { model_id: modelSelect.value }) : [];
    const ready = indexes.filter((i) => i.status === "ready");
    replace(indexSelect, ready.length
      ? ready.map((i) => h("option", { value: i.id }, `index #${i.id}: ${names.get(i.dataset_id) ?? `collection #${i.dataset_id}`} (${i.size} images, ${i.type})`))
      : h("option", { value: "" }, "no ready index for this model"));
    if (preferred && ready.some((i) => String(i.id) === preferred)) indexSelect.value = preferred;
  }
  modelSelect.addEventListener("change", () => loadIndexes());

  // queries
  const chips = h("div", { class: "hits", id: "queries" });
  const renderChips = () => replace(chips, queries.length ? queries.map((q, i) =>
    h("figure", { class: "tile" }, q.kind === "file" ? fileThumb(q.file) : thumb(q.image.url, q.image.path),
      h("figcaption", {}, h("button", { type: "button", class: "link", onclick: () => { queries.splice(i, 1); renderChips(); } }, "remove"))))
    : h("p", { class: "muted" }, "No query yet: drop images here or click thumbnails below."));
  const files = h("input", { type: "file", id: "query-files", accept: "image/*", multiple: true });
  const addFiles = (list) => {
    for (const file of list) queries.push({ kind: "file", file });
    renderChips();
  };
  files.addEventListener("change", () => addFiles(files.files));
  const drop = h("div", { class: "dropzone", id: "query-drop" }, h("label", { class: "field" }, "Query images ", files), h("span", { class: "muted" }, "or drop image files here"), chips);
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => { e.preventDefault(); drop.classList.remove("over"); addFiles(e.dataTransfer.files); });

  const pickFrom = h("select", { id: "pick-collection" }, h("option", { value: "" }, "pick query images from a collection…"),
    datasets.map((d) => h("option", { value: d.id }, d.name)));
  const picker = h("div", { id: "picker" });
  const addStored = (image) => {
    queries.push({ kind: "stored", image });
    renderChips();
  };
  pickFrom.addEventListener("change", () => replace(picker, pickFrom.value ? gallery(Number(pickFrom.value), { onPick: addStored, pickLabel: "add as query" }) : null));

  // filters
  const split = h("select", { name: "split", id: "f-split", "data-loc": "body.split" }, ["", "train", "query", "gallery"].map((s) => h("option", { value: s }, s || "any split")));
  const aggregate = h("select", { name: "aggregate", id: "f-aggregate", "data-loc": "body.aggregate" },
    h("option", { value: "" }, "each image separately"),
    h("option", { value: "mean" }, "as one person: mean embedding"),
    h("option", { value: "max" }, "as one person: best match per image"));
  const perCamera = h("input", { type: "checkbox", id: "f-group_by", "data-loc": "body.group_by" });
  const rerank = h("input", { type: "checkbox", id: "f-rerank", "data-loc": "body.rerank" });
  const filters = h("div", { class: "row" },
    h("label", { class: "field" }, "Queries ", aggregate),
    h("label", { class: "field" }, perCamera, " best hit per camera"),
    h("label", { class: "field", title: "k-reciprocal re-ranking of the top 100" }, rerank, " re-rank"),
    numberField("top_k", "Top-k", { value: 10, min: 1, max: 1000 }),
    numberField("camid", "Camera", { min: 0, placeholder: "any" }),
    numberField("exclude_camid", "Exclude camera", { min: 0, placeholder: "none" }),
    h("label", { class: "field" }, "Split ", split),
    numberField("min_score", "Min score", { step: "0.01", min: -1, max: 1, placeholder: "none" }));
  const results = h("div", { id: "results" });
  const submit = h("button", { type: "submit", class: "primary", id: "search-submit" }, "Search");
  const message = h("p", { class: "error", role: "alert", id: "search-error" });

  const form = h("form", { class: "card", id: "search-form" },
    h("div", { class: "row" }, h("label", { class: "field" }, "Model ", modelSelect), h("label", { class: "field" }, "Index ", indexSelect)),
    drop, filters, message, submit);

  const common = () => {
    const body = new FormData();
    body.append("model_id", modelSelect.value);
    if (indexSelect.value) body.append("index_id", indexSelect.value);
    for (const name of ["top_k", "camid", "exclude_camid", "min_score"]) {
      const value = form.querySelector(`#f-${name}`).value;
      if (value !== "") body.append(name, value);
    }
    if (split.value) body.append("split", split.value);
    if (aggregate.value) body.append("aggregate", aggregate.value);
    if (perCamera.checked) body.append("group_by", "camid");
    if (rerank.checked) body.append("rerank", "true");
    return body;
  };
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    message.textContent = "";
    if (!models.length) return (message.textContent = "No model yet: run a job first.");
    if (!queries.length) return (message.textContent = "Add a query image first.");
    submit.disabled = true;
    try {
      const uploads = queries.filter((q) => q.kind === "file");
      const stored = queries.filter((q) => q.kind === "stored");
      const requests = [];
      if (aggregate.value) { // one request, one list: the whole set is one tracklet
        if (uploads.length && stored.length) throw new Error("A tracklet is either dropped files or collection images, not both.");
        const body = common();
        for (const q of uploads) body.append("image", q.file, q.file.name);
        for (const q of stored) body.append("image_id", q.image.id);
        const response = await api("/search", { method: "POST", body });
        replace(results, resultRow(queries[0], response.results[0], queries.length));
        return;
      }
      if (uploads.length) {
        const body = common();
        for (const q of uploads) body.append("image", q.file, q.file.name);
        requests.push(api("/search", { method: "POST", body }).then((r) => r.results.map((hits, i) => [uploads[i], hits])));
      }
      for (const q of stored) {
        const body = common();
        body.append("image_id", q.image.id);
        requests.push(api("/search", { method: "POST", body }).then((r) => [[q, r.results[0]]]));
      }
      const rows = (await Promise.all(requests)).flat();
      replace(results, rows.map(([q, hits]) => resultRow(q, hits)));
    } catch (error) {
      replace(results);
      message.textContent = error.message;
    } finally {
      submit.disabled = false;
    }
  });

  content.append(form, h("div", { class: "card" }, pickFrom, picker), h("h2", {}, "Results"), results);
  if (query("model_id")) modelSelect.value = query("model_id");
  await loadIndexes(query("index_id"));
  renderChips();
  if (query("image_id")) {
    const id = Number(query("image_id"));
    const pid = query("pid");
    addStored({ id, url: `/images/${id}`, pid: pid === null ? null : Number(pid), camid: null, path: `image ${id}` });
    if (models.length && indexSelect.value) form.requestSubmit();
  }
});
