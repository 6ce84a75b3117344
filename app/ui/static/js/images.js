// Thumbnails that load when they scroll into view. Without an API key the browser fetches
// (and caches) /images/N itself; with one, the bytes come through fetch() with the header
// and show as a blob: URL, released when the element leaves the page.
import { apiKey, send } from "./api.js";
import { h } from "./dom.js";

const blobs = new Map(); // url -> Promise<object URL>

async function blobUrl(url) {
  if (!blobs.has(url)) {
    blobs.set(
      url,
      send(url).then(async (response) => {
        if (!response.ok) throw new Error(`image ${response.status}`);
        return URL.createObjectURL(await response.blob());
      }),
    );
  }
  return blobs.get(url);
}

async function load(img) {
  const url = img.dataset.src;
  try {
    img.src = apiKey() ? await blobUrl(url) : url;
  } catch {
    blobs.delete(url);
    img.classList.add("broken");
  }
}

const observer = new IntersectionObserver(
  (entries) => {
    for (const entry of entries) {
      if (!entry.isIntersecting) continue;
      observer.unobserve(entry.target);
      load(entry.target);
    }
  },
  { rootMargin: "300px" },
);

// An <img> that loads `url` when near the viewport.
export function thumb(url, alt = "") {
  const img = h("img", { class: "thumb", alt, "data-src": url, decoding: "async" });
  observer.observe(img);
  return img;
}

// Forget the blob URLs (a new page of thumbnails is about to replace the old one).
export function releaseThumbs() {
  for (const promise of blobs.values()) promise.then(URL.revokeObjectURL, () => {});
  blobs.clear();
}

// An <img> of a local File (a dropped query image).
export function fileThumb(file) {
  return h("img", { class: "thumb", alt: file.name, src: URL.createObjectURL(file) });
}
