// The jobs, newest first, with their progress; a link to start one.
import { allPages } from "../api.js";
import { h, pct, replace, table, when } from "../dom.js";
import { UI, start } from "../page.js";

function row(job, names) {
  const target = names.get(job.target_dataset_id) ?? `#${job.target_dataset_id}`;
  const source = job.source_dataset_id ? names.get(job.source_dataset_id) ?? `#${job.source_dataset_id}` : "– (unsupervised)";
  const best = job.metrics.filter((m) => typeof m.mAP === "number").at(-1);
  return h("tr", { dataset: { job: job.id } },
    h("td", {}, h("a", { href: `${UI}/jobs/${job.id}` }, `#${job.id}`)),
    h("td", {}, h("span", { class: `badge ${job.status}` }, job.status), job.phase ? ` ${job.phase}` : ""),
    h("td", {}, source),
    h("td", {}, target),
    h("td", {}, h("progress", { max: 1, value: job.progress.fraction }), ` ${pct(job.progress.fraction)}`),
    h("td", { class: "num" }, best ? pct(best.mAP) : "–"),
    h("td", {}, when(job.created_at)),
    h("td", {}, job.model_id ? h("a", { href: `${UI}/search?model_id=${job.model_id}` }, `model #${job.model_id}`) : ""));
}

start("jobs", async (content) => {
  const [jobs, datasets] = await Promise.all([allPages("/jobs"), allPages("/datasets")]);
  const names = new Map(datasets.map((d) => [d.id, d.name]));
  replace(content,
    h("p", {}, h("a", { class: "button primary", href: `${UI}/jobs/new` }, "New job")),
    jobs.length
      ? table(["Job", "Status", "Source", "Target", "Progress", "mAP", "Created", "Model"], jobs.map((j) => row(j, names)))
      : h("p", { class: "muted" }, "No job yet."));
});
