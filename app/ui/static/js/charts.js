// Per-epoch training charts (uPlot), from a job's `metrics` list: the job page draws them
// live as events arrive, and the demo's HTML report embeds this same module.
import uPlot from "uplot";

const COLOURS = ["#2563eb", "#dc2626", "#16a34a", "#9333ea"];

// Each chart: its title, y-axis label and the series (metric key, legend, scale).
export const CHARTS = [
  {
    title: "Loss",
    unit: "",
    series: [
      ["loss", "total", 1],
      ["loss_source", "source", 1],
      ["loss_target", "target", 1],
    ],
  },
  {
    title: "Target clusters",
    unit: "",
    series: [
      ["clusters", "clusters", 1],
      ["unclustered", "un-clustered", 1],
    ],
  },
  {
    title: "Retrieval",
    unit: "%",
    series: [
      ["mAP", "mAP", 100],
      ["rank1", "rank-1", 100],
    ],
  },
];

function columns(chart, metrics) {
  const epochs = metrics.map((m) => m.epoch + 1);
  const ys = chart.series.map(([key, , scale]) =>
    metrics.map((m) => (typeof m[key] === "number" ? m[key] * scale : null)),
  );
  return [epochs, ...ys];
}

function present(chart, metrics) {
  return chart.series.filter(([key]) => metrics.some((m) => typeof m[key] === "number"));
}

function options(chart, width) {
  return {
    title: chart.title,
    width,
    height: 200,
    scales: { x: { time: false } },
    axes: [{ label: "epoch", incrs: [1, 2, 5, 10, 20, 50, 100, 200, 500] }, { label: chart.unit, size: 50 }],
    series: [
      { label: "epoch" },
      ...chart.series.map(([, legend], i) => ({
        label: legend,
        stroke: COLOURS[i],
        width: 2,
        spanGaps: true,
        points: { show: true, size: 5 },
        value: (u, v) => (v === null || v === undefined ? "–" : v.toFixed(chart.unit === "%" ? 1 : 3)),
      })),
    ],
  };
}

// Draw the charts of `metrics` into `container`; returns update(metrics) for new epochs.
// A chart appears once one of its series has a value (no mAP chart without evaluation).
export function trainingCharts(container, metrics = []) {
  const drawn = new Map(); // chart -> {plot, box}
  const width = () => Math.max(280, Math.min(520, container.clientWidth / 2 - 16 || 480));

  function update(current) {
    for (const chart of CHARTS) {
      if (!present(chart, current).length) continue;
      const data = columns(chart, current);
      const existing = drawn.get(chart);
      if (existing) {
        existing.plot.setData(data);
        continue;
      }
      const box = document.createElement("figure");
      box.className = "chart";
      box.dataset.chart = chart.title;
      container.append(box);
      drawn.set(chart, { plot: new uPlot(options(chart, width()), data, box), box });
    }
  }

  new ResizeObserver(() => {
    for (const { plot } of drawn.values()) plot.setSize({ width: width(), height: 200 });
  }).observe(container);
  update(metrics);
  return { update };
}
