// Start page: the collections (datasets), an upload with byte progress, delete.
import { allPages, api, upload } from "../api.js";
import { bytes, h, replace, showFieldErrors, table, when } from "../dom.js";
import { UI, clearError, showError, start } from "../page.js";

const LAYOUTS = ["auto", "market1501", "msmt17", "veri", "vehicleid", "csv", "folders"];

function row(dataset, refresh) {
  const remove = async () => {
    if (!confirm(`Delete the collection "${dataset.name}" and its images?`)) return;
    try {
      await api(`/datasets/${dataset.id}`, { method: "DELETE" });
      clearError();
      refresh();
    } catch (error) {
      showError(error);
    }
  };
  const { train, query, gallery } = dataset.splits;
  return h(
    "tr",
    { dataset: { id: dataset.id } },
    h("td", {}, h("a", { href: `${UI}/collections/${dataset.id}`, class: "name" }, dataset.name)),
    h("td", {}, dataset.labeled ? "labeled (source)" : "unlabeled (target)"),
    h("td", { class: "num" }, String(train)),
    h("td", { class: "num" }, String(query)),
    h("td", { class: "num" }, String(gallery)),
    h("td", { class: "num" }, String(dataset.num_identities)),
    h("td", { class: "num" }, String(dataset.num_cameras)),
    h("td", {}, when(dataset.created_at)),
    h("td", {}, h("button", { type: "button", class: "danger", onclick: remove }, "Delete")),
  );
}

function uploadResult(dataset) {
  const { train, query, gallery } = dataset.splits;
  return h(
    "div",
    { class: "result", id: "upload-result" },
    h("p", {}, `Stored "${dataset.name}": ${dataset.num_images} images (train ${train}, query ${query}, gallery ${gallery}), ${dataset.num_identities} identities, ${dataset.num_cameras} cameras.`),
    dataset.rejected.length
      ? h(
          "details",
          { open: true },
          h("summary", {}, `${dataset.rejected.length} files rejected`),
          h("ul", { class: "rejected" }, dataset.rejected.map((r) => h("li", {}, h("code", {}, r.path), ` — ${r.reason}`))),
        )
      : h("p", { class: "muted" }, "No file was rejected."),
  );
}

function uploadForm(refresh) {
  const file = h("input", { type: "file", name: "file", id: "upload-file", accept: ".zip,.tar,.tgz,.gz,.bz2,.xz", "data-loc": "body.file" });
  const chosen = h("span", { class: "muted" }, "or drop an archive here");
  const name = h("input", { type: "text", name: "name", id: "upload-name", maxlength: 255, required: true, "data-loc": "body.name" });
  const labeled = h("select", { name: "labeled", id: "upload-labeled", "data-loc": "body.labeled" },
    h("option", { value: "false" }, "unlabeled target (your cameras)"),
    h("option", { value: "true" }, "labeled source (identities known)"));
  const layout = h("select", { name: "layout", id: "upload-layout", "data-loc": "body.layout" }, LAYOUTS.map((l) => h("option", { value: l }, l)));
  const progress = h("progress", { id: "upload-progress", max: 1, value: 0, hidden: true });
  const progressText = h("span", { class: "muted", id: "upload-progress-text" });
  const answer = h("div", { id: "upload-answer" });
  let dropped = null;

  const setFile = (f) => {
    dropped = f;
    chosen.textContent = f ? `${f.name} (${bytes(f.size)})` : "or drop an archive here";
    if (f && !name.value) name.value = f.name.replace(/\.(zip|tar|tgz|tar\.gz|tar\.bz2|tar\.xz)$/i, "");
  };
  file.addEventListener("change", () => setFile(file.files[0] || null));
  const zone = h("div", { class: "dropzone", id: "upload-drop" }, h("label", { class: "field" }, "Archive ", file), chosen);
  zone.addEventListener("dragover", (e) => {
    e.preventDefault();
    zone.classList.add("over");
  });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (e) => {
    e.preventDefault();
    zone.classList.remove("over");
    if (e.dataTransfer.files.length) setFile(e.dataTransfer.files[0]);
  });

  const submit = h("button", { type: "submit", class: "primary", id: "upload-submit" }, "Upload");
  const form = h(
    "form",
    { class: "card", id: "upload-form" },
    h("h2", {}, "Upload a collection"),
    h("p", { class: "muted" }, "A .zip or .tar(.gz) archive of images in a Market-1501, MSMT17, VeRi, VehicleID, CSV or one-folder-per-identity layout."),
    zone,
    h("div", { class: "row" },
      h("label", { class: "field" }, "Name ", name),
      h("label", { class: "field" }, "Kind ", labeled),
      h("label", { class: "field" }, "Layout ", layout)),
    h("div", { class: "row" }, submit, progress, progressText),
    answer,
  );
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const body = new FormData();
    body.append("name", name.value);
    body.append("labeled", labeled.value);
    body.append("layout", layout.value);
    if (dropped) body.append("file", dropped, dropped.name);
    submit.disabled = true;
    progress.hidden = false;
    replace(answer);
    try {
      const dataset = await upload("/datasets", body, (loaded, total) => {
        progress.value = total ? loaded / total : 0;
        progressText.textContent = `${bytes(loaded)} of ${bytes(total)} sent${loaded >= total ? ", the server is reading the images…" : ""}`;
      });
      showFieldErrors(form, { errors: [] });
      replace(answer, uploadResult(dataset));
      progressText.textContent = "done";
      refresh();
    } catch (error) {
      const unplaced = showFieldErrors(form, error);
      replace(answer, h("p", { class: "error", role: "alert", id: "upload-error" }, unplaced.length ? unplaced.join("; ") : error.message));
      progressText.textContent = "";
    } finally {
      submit.disabled = false;
      progress.hidden = true;
    }
  });
  return form;
}

start("collections", async (content) => {
  const list = h("div", { id: "collections" });
  const refresh = async () => {
    const datasets = await allPages("/datasets");
    replace(
      list,
      datasets.length
        ? table(
            ["Name", "Kind", "Train", "Query", "Gallery", "Identities", "Cameras", "Created", ""],
            datasets.map((d) => row(d, refresh)),
          )
        : h("p", { class: "muted" }, "No collection yet: upload one below."),
    );
  };
  content.append(list, uploadForm(() => refresh().catch(showError)));
  await refresh();
});
