// New job: dataset pickers and a field for every training option, built from the API's
// own schema (OpenAPI's JobRequest), presets, and the 422 messages next to their field.
import { allPages, api } from "../api.js";
import { h, showFieldErrors } from "../dom.js";
import { UI, showError, start } from "../page.js";

// The presets fill in some options and clear the rest (the recipe decides those).
export const PRESETS = {
  "Quick CPU check": { arch: "mobilenet_v2", epochs: 2, iters: 5, batch_size: 16, height: 128, width: 64, eval_step: 1, device: "cpu", workers: 0 },
  CPU: { arch: "mobilenet_v2", epochs: 20, iters: 30, batch_size: 32, height: 128, width: 64, device: "cpu", workers: 0 },
  "GPU (paper settings)": { recipe: "paper", arch: "resnet50", epochs: 50, iters: 400, batch_size: 64, height: 256, width: 128, device: "cuda", amp: true },
};

function types(schema) {
  const branches = schema.anyOf ?? [schema];
  return new Set(branches.map((b) => b.type).filter(Boolean));
}

function input(name, schema) {
  const loc = `body.config.${name}`;
  const kinds = types(schema);
  const placeholder = schema.description ?? "";
  if (schema.enum) {
    return h("select", { name, "data-loc": loc },
      h("option", { value: "" }, placeholder), schema.enum.map((v) => h("option", { value: v }, v)));
  }
  if (kinds.has("boolean") && kinds.size === 1) {
    return h("select", { name, "data-loc": loc },
      h("option", { value: "" }, placeholder), h("option", { value: "true" }, "yes"), h("option", { value: "false" }, "no"));
  }
  const numeric = kinds.size === 1 && (kinds.has("integer") || kinds.has("number"));
  return h("input", {
    name,
    "data-loc": loc,
    placeholder,
    type: numeric ? "number" : "text",
    step: kinds.has("integer") ? "1" : "any",
  });
}

// A field's text as the JSON value its schema expects (the server validates the rest).
function value(element, schema) {
  const text = element.value.trim();
  if (text === "") return undefined;
  const kinds = types(schema);
  if (kinds.has("boolean") && (text === "true" || text === "false")) return text === "true";
  if ((kinds.has("integer") || kinds.has("number")) && text !== "" && !Number.isNaN(Number(text))) return Number(text);
  return text;
}

function datasetSelect(id, loc, datasets, empty) {
  return h("select", { id, name: id, "data-loc": loc },
    empty === null ? null : h("option", { value: "" }, empty),
    datasets.map((d) => h("option", { value: d.id }, `${d.name} (#${d.id}, ${d.splits.train} train images)`)));
}

start("jobs", async (content) => {
  const [openapi, datasets] = await Promise.all([api("/openapi.json"), allPages("/datasets")]);
  const request = openapi.components.schemas.JobRequest;
  const options = request.properties.config.properties;
  const labeled = datasets.filter((d) => d.labeled);
  const target = datasetSelect("target", "body.target_dataset_id", datasets, null);
  const source = datasetSelect("source", "body.source_dataset_id", labeled, "none: unsupervised (no source)");
  const evaluation = datasetSelect("eval", "body.eval_dataset_id", datasets.filter((d) => d.splits.query && d.splits.gallery), "default: the target's own query/gallery, if labeled");
  const fields = new Map(Object.entries(options).map(([name, schema]) => [name, input(name, schema)]));
  const message = h("p", { class: "error", role: "alert", id: "job-error" });

  const applyPreset = (values) => {
    for (const [name, element] of fields) element.value = name in values ? String(values[name]) : "";
  };
  const form = h("form", { class: "card", id: "job-form" },
    h("h2", {}, "Data"),
    h("div", { class: "row" },
      h("label", { class: "field" }, "Target (unlabeled) ", target),
      h("label", { class: "field" }, "Source (labeled) ", source),
      h("label", { class: "field" }, "Evaluate on ", evaluation)),
    h("h2", {}, "Training options"),
    h("p", {}, "Presets: ", Object.entries(PRESETS).map(([title, values]) =>
      h("button", { type: "button", class: "preset", onclick: () => applyPreset(values) }, title))),
    h("p", { class: "muted" }, "Leave an option empty for its default; the recipe sets the ones marked so."),
    h("div", { class: "options" }, [...fields].map(([name, element]) =>
      h("label", { class: "field", title: options[name].description ?? "" }, h("span", { class: "option-name" }, name), element))),
    message,
    h("button", { type: "submit", class: "primary", id: "job-submit" }, "Start job"));
  if (!datasets.length) message.textContent = "Upload a collection first (Collections page).";

  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const config = {};
    for (const [name, element] of fields) {
      const v = value(element, options[name]);
      if (v !== undefined) config[name] = v;
    }
    const body = { target_dataset_id: Number(target.value), config };
    if (source.value) body.source_dataset_id = Number(source.value);
    if (evaluation.value) body.eval_dataset_id = Number(evaluation.value);
    message.textContent = "";
    try {
      const job = await api("/jobs", { method: "POST", json: body });
      location.href = `${UI}/jobs/${job.id}`;
    } catch (error) {
      if (error.status !== 422) return showError(error);
      const unplaced = showFieldErrors(form, error);
      message.textContent = unplaced.length ? unplaced.join("; ") : "Fix the fields marked above.";
    }
  });
  applyPreset(PRESETS["Quick CPU check"]);
  content.append(form);
});
