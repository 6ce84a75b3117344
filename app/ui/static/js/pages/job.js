// One job, live: status from the job's server-sent events, per-epoch charts, the event
// log, cancel; once it ends, its model, its index and a link to search with them.
import { api, watch } from "../api.js";
import { trainingCharts } from "../charts.js";
import { byId, duration, h, pct, replace, table } from "../dom.js";
import { UI, body, setTitle, showError, start } from "../page.js";

const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);

// The 1-based epoch being worked on; after the last one the counter stays at the last.
const epochOf = (p) => Math.min(p.epoch + 1, p.epochs);

function summary(job) {
  const p = job.progress;
  const last = job.metrics.at(-1) ?? {};
  return h("dl", { class: "facts", id: "job-status" },
    h("dt", {}, "Status"), h("dd", {}, h("span", { class: `badge ${job.status}`, id: "job-state" }, job.status), job.cancel_requested && !TERMINAL.has(job.status) ? " (cancelling)" : ""),
    h("dt", {}, "Phase"), h("dd", { id: "job-phase" }, job.phase ?? "–"),
    h("dt", {}, "Epoch"), h("dd", {}, `${epochOf(p)} of ${p.epochs}`),
    h("dt", {}, "Iteration"), h("dd", {}, `${p.iteration} of ${p.iterations}`),
    h("dt", {}, "Progress"), h("dd", {}, h("progress", { max: 1, value: p.fraction }), ` ${pct(p.fraction)}`),
    h("dt", {}, "ETA"), h("dd", {}, TERMINAL.has(job.status) ? "–" : duration(job.eta_seconds)),
    h("dt", {}, "Images/s"), h("dd", {}, typeof last.images_per_s === "number" ? last.images_per_s.toFixed(1) : "–"),
    h("dt", {}, "Attempts"), h("dd", {}, String(job.attempts)),
    job.error ? [h("dt", {}, "Error"), h("dd", { class: "error", id: "job-failure" }, job.error)] : null);
}

function epochTable(metrics) {
  const num = (v, digits = 3) => (typeof v === "number" ? v.toFixed(digits) : "–");
  return table(["Epoch", "eps", "Clusters", "Un-clustered", "Loss", "mAP", "Rank-1", "Seconds"], metrics.map((m) =>
    h("tr", {},
      h("td", {}, String(m.epoch + 1)), h("td", {}, num(m.eps, 3)), h("td", {}, String(m.clusters ?? "–")),
      h("td", {}, String(m.unclustered ?? "–")), h("td", {}, num(m.loss)), h("td", {}, pct(m.mAP)),
      h("td", {}, pct(m.rank1)), h("td", {}, num(m.seconds, 1)))));
}

async function outcome(job) {
  if (job.status !== "succeeded" || !job.model_id) return null;
  const indexes = await api(`/indexes?model_id=${job.model_id}&limit=200`);
  const ready = indexes.items.filter((i) => i.status === "ready");
  return h("div", { class: "card", id: "job-outcome" },
    h("h2", {}, "Result"),
    h("p", {}, "Model ", h("a", { href: `${UI}/models#model-${job.model_id}` }, `#${job.model_id}`),
      ready.length ? ` and index #${ready[0].id} (${ready[0].size} images). ` : ". ",
      h("a", { class: "button primary", id: "search-link", href: `${UI}/search?model_id=${job.model_id}${ready.length ? `&index_id=${ready[0].id}` : ""}` }, "Search with it")));
}

start("jobs", async (content) => {
  const id = Number(body.dataset.job);
  setTitle(`Job #${id}`);
  const status = h("div", { id: "status-box" });
  const cancel = h("button", { type: "button", class: "danger", id: "cancel" }, "Cancel job");
  const chartsBox = h("div", { class: "charts", id: "charts" });
  const epochs = h("div", { id: "epochs" });
  const log = h("ol", { class: "log", id: "event-log" });
  const result = h("div");
  content.append(status, h("p", {}, cancel), h("h2", {}, "Training"), chartsBox, epochs, result,
    h("details", { open: true }, h("summary", {}, "Event log"), log));

  let charts = null;
  let previous = null;
  const show = async (job) => {
    replace(status, summary(job));
    cancel.hidden = TERMINAL.has(job.status);
    if (!charts) charts = trainingCharts(chartsBox, job.metrics);
    else charts.update(job.metrics);
    replace(epochs, job.metrics.length ? epochTable(job.metrics) : h("p", { class: "muted" }, "No epoch finished yet."));
    const line = `${job.status}${job.phase ? ` · ${job.phase}` : ""} · epoch ${epochOf(job.progress)}/${job.progress.epochs} · iteration ${job.progress.iteration}/${job.progress.iterations}`;
    if (line !== previous) {
      log.append(h("li", {}, h("time", {}, new Date().toLocaleTimeString()), " ", line));
      previous = line;
    }
    if (TERMINAL.has(job.status)) replace(result, await outcome(job));
  };
  cancel.addEventListener("click", async () => {
    if (!confirm(`Cancel job #${id}?`)) return;
    try {
      await show(await api(`/jobs/${id}/cancel`, { method: "POST" }));
    } catch (error) {
      showError(error);
    }
  });
  await show(await api(`/jobs/${id}`));
  await watch(`/jobs/${id}/events`, (event, job) => event === "job" && show(job));
  byId("status-box").dataset.ended = "true";
});
