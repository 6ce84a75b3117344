// One collection: its counts, its images (paged, filterable), rejected files, indexes.
import { api } from "../api.js";
import { h, table, when } from "../dom.js";
import { gallery } from "../gallery.js";
import { UI, body, setTitle, start } from "../page.js";

function facts(dataset) {
  const { train, query, gallery } = dataset.splits;
  return h("dl", { class: "facts" },
    h("dt", {}, "Kind"), h("dd", {}, dataset.labeled ? "labeled source" : "unlabeled target"),
    h("dt", {}, "Images"), h("dd", {}, `${dataset.num_images} (train ${train}, query ${query}, gallery ${gallery})`),
    h("dt", {}, "Identities"), h("dd", {}, String(dataset.num_identities)),
    h("dt", {}, "Cameras"), h("dd", {}, String(dataset.num_cameras)),
    h("dt", {}, "Layout"), h("dd", {}, dataset.layout),
    h("dt", {}, "Created"), h("dd", {}, when(dataset.created_at)));
}

function indexes(list) {
  if (!list.length) return h("p", { class: "muted" }, "No index is built on this collection yet (a job builds one of its target).");
  return table(["Index", "Model", "Status", "Images", "Type", ""], list.map((index) =>
    h("tr", {},
      h("td", {}, `#${index.id}`),
      h("td", {}, `model #${index.model_id}`),
      h("td", {}, index.status),
      h("td", { class: "num" }, String(index.size)),
      h("td", {}, index.type ?? "–"),
      h("td", {}, index.status === "ready" ? h("a", { href: `${UI}/search?index_id=${index.id}&model_id=${index.model_id}` }, "Search") : ""))));
}

start("collections", async (content) => {
  const id = Number(body.dataset.dataset);
  const [dataset, indexPage] = await Promise.all([
    api(`/datasets/${id}`),
    api(`/indexes?dataset_id=${id}&limit=200`),
  ]);
  setTitle(`Collection: ${dataset.name}`);
  const pick = (image) => {
    const params = new URLSearchParams({ image_id: image.id, dataset_id: id });
    if (image.pid !== null) params.set("pid", image.pid);
    location.href = `${UI}/search?${params}`;
  };
  const images = gallery(id, { onPick: pick });
  content.append(
    facts(dataset),
    h("h2", {}, "Images"),
    h("p", { class: "muted" }, "Click an image to search with it."),
    images,
    h("h2", {}, `Rejected files (${dataset.rejected.length})`),
    dataset.rejected.length
      ? h("ul", { class: "rejected" }, dataset.rejected.map((r) => h("li", {}, h("code", {}, r.path), ` — ${r.reason}`)))
      : h("p", { class: "muted" }, "None."),
    h("h2", {}, "Indexes"),
    indexes(indexPage.items),
  );
  await images.ready;
});
