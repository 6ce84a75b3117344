// A collection's images as a paged, filterable grid of lazy thumbnails: the collection
// page shows it, and the search page uses it to pick query images by clicking.
import { api } from "./api.js";
import { h, label, replace } from "./dom.js";
import { releaseThumbs, thumb } from "./images.js";

const PAGE = 120;

function numberInput(name, placeholder) {
  return h("input", { type: "number", min: 0, name, placeholder, class: "narrow" });
}

// gallery(datasetId, {onPick(image)}) -> element; onPick: what a click on a thumbnail does.
export function gallery(datasetId, { onPick, pickLabel = "search with this image" } = {}) {
  const split = h("select", { name: "split" }, ["", "train", "query", "gallery"].map((s) => h("option", { value: s }, s || "all splits")));
  const pid = numberInput("pid", "identity");
  const camid = numberInput("camid", "camera");
  const info = h("span", { class: "muted" });
  const grid = h("div", { class: "grid", dataset: { gallery: datasetId }, "aria-busy": "true" });
  const prev = h("button", { type: "button" }, "‹ Previous");
  const next = h("button", { type: "button" }, "Next ›");
  let offset = 0;
  let latest = 0; // answers to superseded requests are dropped, so filters always win

  async function load() {
    const request = ++latest;
    grid.setAttribute("aria-busy", "true");
    const params = new URLSearchParams({ limit: PAGE, offset });
    if (split.value) params.set("split", split.value);
    if (pid.value !== "") params.set("pid", pid.value);
    if (camid.value !== "") params.set("camid", camid.value);
    const page = await api(`/datasets/${datasetId}/images?${params}`);
    if (request !== latest) return;
    releaseThumbs();
    replace(
      grid,
      page.items.map((image) => {
        const caption = [image.split, label(image.pid, image.camid)].filter(Boolean).join(" · ");
        const tile = h("figure", { class: "tile", title: `${image.path}\n${caption}`, dataset: { imageId: image.id } },
          thumb(image.url, image.path), h("figcaption", {}, caption));
        if (onPick) {
          tile.classList.add("pickable");
          tile.setAttribute("role", "button");
          tile.setAttribute("tabindex", "0");
          tile.setAttribute("aria-label", `${pickLabel}: ${image.path}`);
          tile.addEventListener("click", () => onPick(image));
          tile.addEventListener("keydown", (e) => e.key === "Enter" && onPick(image));
        }
        return tile;
      }),
    );
    grid.setAttribute("aria-busy", "false");
    if (!page.items.length) grid.append(h("p", { class: "muted" }, "No image matches."));
    const last = Math.min(offset + page.items.length, page.total);
    info.textContent = page.total ? `${offset + 1}–${last} of ${page.total}` : "0 images";
    prev.disabled = offset === 0;
    next.disabled = last >= page.total;
  }

  const reload = () => {
    offset = 0;
    load();
  };
  for (const input of [split, pid, camid]) input.addEventListener("change", reload);
  prev.addEventListener("click", () => {
    offset = Math.max(0, offset - PAGE);
    load();
  });
  next.addEventListener("click", () => {
    offset += PAGE;
    load();
  });
  const element = h("div", { class: "gallery" },
    h("div", { class: "row filters" }, split, pid, camid, prev, next, info),
    grid);
  element.ready = load();
  return element;
}
