// What every page does first: mark its nav link, offer to forget the API key, and show a
// failure of the page's own code or of a request as a message rather than a blank page.
import { apiKey, forgetKey } from "./api.js";
import { byId, h, replace } from "./dom.js";

export const UI = "/ui";
export const body = document.body;
export const content = () => byId("content");

export function showError(error) {
  const box = byId("page-error");
  box.textContent = error?.message || String(error);
  box.hidden = false;
}

export function clearError() {
  byId("page-error").hidden = true;
}

export function setTitle(text) {
  byId("title").textContent = text;
  document.title = `${text} · reid-service`;
}

// Run the page's render(content element); errors go to the banner.
export function start(nav, render) {
  for (const link of document.querySelectorAll("[data-nav]")) {
    if (link.dataset.nav === nav) link.setAttribute("aria-current", "page");
  }
  const forget = byId("forget-key");
  const refreshKeyButton = () => {
    forget.hidden = !apiKey();
  };
  forget.addEventListener("click", () => {
    forgetKey();
    location.reload();
  });
  refreshKeyButton();
  window.addEventListener("unhandledrejection", (e) => showError(e.reason));
  Promise.resolve()
    .then(() => render(replace(content())))
    .catch((error) => {
      replace(content(), h("p", { class: "muted" }, "Nothing to show."));
      showError(error);
    })
    .finally(refreshKeyButton);
}
