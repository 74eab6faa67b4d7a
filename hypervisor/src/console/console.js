// dvs console: live updates for pages that read fine without this script. Polls small answers of
// this node's console (same origin, the session cookie): the instance table, the DCs' frame counters
// (turned into rates here), and an instance's console log.
"use strict";

const HISTORY = 60;          // samples kept per chart
const RATE_MS = 1000;        // counters poll
const TABLE_MS = 3000;       // instance table poll
const LOG_MS = 1000;         // console log poll

async function fetchOk(url, as) {
  const r = await fetch(url, { credentials: "same-origin", cache: "no-store" });
  if (!r.ok) throw new Error(url + ": " + r.status);
  return as === "json" ? r.json() : r.text();
}

// The instance table: replaced by the server's fragment unless the user is using one of its forms.
function followTable(box) {
  const url = box.dataset.refresh;
  setInterval(async () => {
    if (box.contains(document.activeElement) && document.activeElement !== document.body) return;
    try { box.innerHTML = await fetchOk(url, "text"); } catch (e) { /* the next poll tries again */ }
  }, TABLE_MS);
}

// Message-rate charts: frames/s per DC from successive counter totals.
function followRates(cards) {
  const byDc = new Map();
  for (const c of cards) byDc.set(c.dataset.dc, { card: c, last: null, rates: [] });
  async function poll() {
    let answer;
    try { answer = await fetchOk("/console/rates", "json"); } catch (e) { return; }
    for (const d of answer.dcs) {
      const s = byDc.get(String(d.dc));
      if (!s) continue;
      if (s.last && answer.t_ms > s.last.t && d.frames >= s.last.frames) {
        s.rates.push((d.frames - s.last.frames) * 1000 / (answer.t_ms - s.last.t));
        if (s.rates.length > HISTORY) s.rates.shift();
        draw(s);
      }
      s.last = { t: answer.t_ms, frames: d.frames };
    }
  }
  poll();
  setInterval(poll, RATE_MS);
}

function draw(s) {
  const line = s.card.querySelector("polyline");
  const label = s.card.querySelector(".rate");
  const max = Math.max(1, ...s.rates);
  const step = 240 / (HISTORY - 1);
  // One sample is a level line; more run from the right edge back in time.
  const rates = s.rates.length === 1 ? [s.rates[0], s.rates[0]] : s.rates;
  const x0 = 240 - step * (rates.length - 1);
  line.setAttribute("points", rates
    .map((r, i) => (x0 + i * step).toFixed(1) + "," + (46 - 44 * r / max).toFixed(1)).join(" "));
  const now = s.rates[s.rates.length - 1];
  label.textContent = (now >= 100 ? now.toFixed(0) : now.toFixed(1)) + " frames/s (peak " + max.toFixed(0) + ")";
}

// An instance's console log: the last lines, kept scrolled to the end unless the user scrolled up.
function followLog(pre) {
  const url = pre.dataset.follow;
  pre.scrollTop = pre.scrollHeight;
  setInterval(async () => {
    let answer;
    try { answer = await fetchOk(url, "json"); } catch (e) { return; }
    if (answer.log === pre.textContent) return;
    const atEnd = pre.scrollHeight - pre.scrollTop - pre.clientHeight < 24;
    pre.textContent = answer.log;
    if (atEnd) pre.scrollTop = pre.scrollHeight;
  }, LOG_MS);
}

document.addEventListener("DOMContentLoaded", () => {
  const table = document.getElementById("instances");
  if (table) followTable(table);
  const cards = document.querySelectorAll(".dc[data-dc]");
  if (cards.length) followRates(cards);
  const log = document.getElementById("log");
  if (log && log.dataset.follow) followLog(log);
});
