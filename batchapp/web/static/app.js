// Live progress on a job page: poll the JSON API (the object of `batchapp status --json`)
// every 1.5 s while the job runs, and reload once when it finishes. No framework, no build.
"use strict";

const POLL_MS = 1500;

function text(id, value) {
  const element = document.getElementById(id);
  if (element) element.textContent = value;
}

function duration(seconds) {
  if (!isFinite(seconds) || seconds < 0) return "-";
  if (seconds < 60) return `${seconds.toFixed(0)} s`;
  const minutes = Math.floor(seconds / 60);
  if (minutes < 60) return `${minutes} min ${Math.round(seconds % 60)} s`;
  return `${Math.floor(minutes / 60)} h ${minutes % 60} min`;
}

// Rate and ETA over the current run (the last execution): chunks finished in it per second,
// and items at the job's average items per finished chunk.
function rateAndEta(job, now) {
  const runs = job.executions || [];
  const run = runs[runs.length - 1];
  const started = Date.parse(run ? run.started_at : job.created_at);
  const ended = job.finished_at ? Date.parse(job.finished_at) : now;
  const seconds = (ended - started) / 1000;
  const finished = job.chunks.done + job.chunks.failed;
  const inRun = run ? run.chunks.done + run.chunks.failed : finished;
  if (!(seconds > 0) || inRun === 0) return { rate: "-", eta: job.status === "running" ? "-" : "" };
  const chunkRate = inRun / seconds;
  const perChunk = finished ? (job.items.done + job.items.failed) / finished : 0;
  const rate = `${Math.round(chunkRate * perChunk).toLocaleString()} items/s (${chunkRate.toFixed(2)} chunks/s)`;
  const remaining = job.chunks.total - finished;
  const eta = job.status === "running" ? duration(remaining / chunkRate) : "";
  return { rate, eta };
}

function show(job) {
  text("status", job.status);
  const status = document.getElementById("status");
  if (status) status.className = `status ${job.status}`;
  text("chunks-done", job.chunks.done);
  text("chunks-total", job.chunks.total);
  text("chunks-failed", job.chunks.failed);
  text("items-done", job.items.done.toLocaleString("en-US"));
  text("items-failed", job.items.failed.toLocaleString("en-US"));
  const bar = document.getElementById("bar");
  if (bar) {
    bar.max = Math.max(job.chunks.total, 1);
    bar.value = job.chunks.done + job.chunks.failed;
  }
  const runs = job.executions || [];
  if (runs.length) {
    text("run-done", runs[runs.length - 1].chunks.done);
    text("run-failed", runs[runs.length - 1].chunks.failed);
  }
  const { rate, eta } = rateAndEta(job, Date.now());
  text("rate", rate);
  text("eta", eta || "-");
}

async function follow(section) {
  const url = `/api/jobs/${encodeURIComponent(section.dataset.jobId)}`;
  let wasRunning = section.dataset.status === "running";
  for (;;) {
    try {
      const response = await fetch(url, { headers: { Accept: "application/json" } });
      if (response.ok) {
        const job = await response.json();
        show(job);
        if (job.status === "running") wasRunning = true;
        else if (wasRunning) {
          window.location.reload(); // the tables below change when a run ends
          return;
        } else return;
      }
    } catch (error) {
      // The server restarted or the network blinked: try again at the next tick.
    }
    await new Promise((resolve) => setTimeout(resolve, POLL_MS));
  }
}

document.addEventListener("DOMContentLoaded", () => {
  const section = document.getElementById("progress");
  if (section) follow(section);
});
