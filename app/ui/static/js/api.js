// The JSON API as the pages use it: the API key (sessionStorage) on every request, a key
// prompt on 401 (then the request is retried), errors as ApiError with the server's detail.
import { fetchEventSource } from "fetch-event-source";

const KEY = "reid-api-key";

export class ApiError extends Error {
  constructor(status, body) {
    super(typeof body?.detail === "string" ? body.detail : `HTTP ${status}`);
    this.status = status;
    this.errors = Array.isArray(body?.errors) ? body.errors : [];
  }
}

export function apiKey() {
  return sessionStorage.getItem(KEY);
}

export function forgetKey() {
  sessionStorage.removeItem(KEY);
}

export function authHeaders(extra = {}) {
  const headers = { ...extra };
  const key = apiKey();
  if (key) headers.Authorization = `Bearer ${key}`;
  return headers;
}

let pendingPrompt = null;

// One dialog for every request that got a 401 at the same time.
export function askForKey(message) {
  if (pendingPrompt) return pendingPrompt;
  const dialog = document.getElementById("key-dialog");
  const form = document.getElementById("key-form");
  const input = document.getElementById("key-input");
  document.getElementById("key-error").textContent = apiKey() ? message : "";
  input.value = "";
  pendingPrompt = new Promise((resolve) => {
    form.addEventListener(
      "submit",
      () => {
        sessionStorage.setItem(KEY, input.value.trim());
        pendingPrompt = null;
        resolve();
      },
      { once: true },
    );
  });
  dialog.showModal();
  return pendingPrompt;
}

async function errorBody(response) {
  try {
    return await response.json();
  } catch {
    return { detail: `${response.status} ${response.statusText}` };
  }
}

// fetch() with the key; on 401, ask for a key and try again. Returns the Response.
export async function send(path, init = {}) {
  for (;;) {
    const response = await fetch(path, { ...init, headers: authHeaders(init.headers) });
    if (response.status !== 401) return response;
    await askForKey((await errorBody(response)).detail);
  }
}

// The parsed JSON of a successful response (null for 204), else throws ApiError.
export async function api(path, { method = "GET", json, body } = {}) {
  const init = { method, body };
  if (json !== undefined) {
    init.body = JSON.stringify(json);
    init.headers = { "Content-Type": "application/json" };
  }
  const response = await send(path, init);
  if (!response.ok) throw new ApiError(response.status, await errorBody(response));
  return response.status === 204 ? null : response.json();
}

// Every item of a paged listing (the API caps a page at 200).
export async function allPages(path, params = {}) {
  const items = [];
  for (let offset = 0; ; ) {
    const query = new URLSearchParams({ ...params, limit: 200, offset });
    const page = await api(`${path}?${query}`);
    items.push(...page.items);
    offset += page.items.length;
    if (!page.items.length || offset >= page.total) return items;
  }
}

// POST a FormData with upload progress (fetch() has none): onProgress(loaded, total).
export function upload(path, form, onProgress) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", path);
    for (const [name, value] of Object.entries(authHeaders())) xhr.setRequestHeader(name, value);
    xhr.upload.addEventListener("progress", (e) => onProgress(e.loaded, e.total));
    xhr.addEventListener("error", () => reject(new ApiError(0, { detail: "network error" })));
    xhr.addEventListener("load", () => {
      let body;
      try {
        body = JSON.parse(xhr.responseText);
      } catch {
        body = { detail: `${xhr.status} ${xhr.statusText}` };
      }
      if (xhr.status === 401) {
        askForKey(body.detail).then(() => upload(path, form, onProgress).then(resolve, reject));
      } else if (xhr.status >= 200 && xhr.status < 300) {
        resolve(body);
      } else {
        reject(new ApiError(xhr.status, body));
      }
    });
    xhr.send(form);
  });
}

class FatalStreamError extends Error {}

// Server-sent events of `path` (the key in the header, which EventSource cannot send):
// onMessage(event name, parsed data) until the server ends the stream. A dropped connection
// is retried by the library; an HTTP error ends the watch with an ApiError.
export async function watch(path, onMessage, signal) {
  for (;;) {
    let unauthorized = null;
    try {
      await fetchEventSource(path, {
        headers: authHeaders(),
        signal,
        openWhenHidden: true,
        async onopen(response) {
          if (response.status === 401) {
            unauthorized = (await errorBody(response)).detail;
            throw new FatalStreamError("401");
          }
          if (!response.ok) throw new ApiError(response.status, await errorBody(response));
        },
        onmessage(message) {
          if (message.data) onMessage(message.event || "message", JSON.parse(message.data));
        },
        onerror(error) {
          if (error instanceof ApiError || error instanceof FatalStreamError) throw error;
          return 2000; // retry a network error after 2 s
        },
      });
      return;
    } catch (error) {
      if (unauthorized === null) throw error;
      await askForKey(unauthorized);
    }
  }
}
