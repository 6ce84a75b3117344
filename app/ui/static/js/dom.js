// Building the page: elements from data with textContent only, so a user's string (a
// collection name, a file name, an error) is always text, never markup.

// h("a", {href: "/x", class: "c", onclick: f}, "text", child...): an element.
export function h(tag, attrs = {}, ...children) {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on") && typeof value === "function") {
      element.addEventListener(name.slice(2), value);
    } else if (name === "dataset") {
      Object.assign(element.dataset, value);
    } else if (name in element && typeof value !== "string") {
      element[name] = value;
    } else {
      element.setAttribute(name, value === true ? "" : String(value));
    }
  }
  element.append(...children.flat().filter((c) => c !== null && c !== undefined && c !== false));
  return element;
}

export function replace(target, ...children) {
  target.replaceChildren(...children.flat().filter((c) => c !== null && c !== undefined));
  return target;
}

export const byId = (id) => document.getElementById(id);

export function table(headers, rows) {
  return h(
    "table",
    {},
    h("thead", {}, h("tr", {}, headers.map((text) => h("th", {}, text)))),
    h("tbody", {}, rows),
  );
}

export function pct(value) {
  return value === null || value === undefined ? "–" : `${(100 * value).toFixed(1)}%`;
}

export function when(iso) {
  return iso ? new Date(iso).toLocaleString() : "–";
}

export function duration(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  const s = Math.round(seconds);
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${s % 60}s`;
  return `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m`;
}

export function bytes(n) {
  if (n < 1024) return `${n} B`;
  const units = ["KiB", "MiB", "GiB", "TiB"];
  let value = n / 1024;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return `${value.toFixed(1)} ${units[unit]}`;
}

export function label(pid, camid) {
  return [pid === null || pid === undefined ? null : `id ${pid}`, camid === null || camid === undefined ? null : `cam ${camid}`]
    .filter(Boolean)
    .join(" · ");
}

export function query(name) {
  return new URLSearchParams(location.search).get(name);
}

// A field's 422 messages next to the field: the inputs carry data-loc="body.config.epochs".
export function showFieldErrors(form, error) {
  for (const old of form.querySelectorAll(".field-error")) old.remove();
  for (const input of form.querySelectorAll("[aria-invalid]")) input.removeAttribute("aria-invalid");
  const unplaced = [];
  for (const { loc, msg } of error.errors || []) {
    const input = form.querySelector(`[data-loc="${CSS.escape(loc)}"]`);
    if (!input) {
      unplaced.push(`${loc}: ${msg}`);
      continue;
    }
    input.setAttribute("aria-invalid", "true");
    input.closest("label, .field").append(h("span", { class: "field-error", role: "alert" }, msg));
  }
  return unplaced;
}
