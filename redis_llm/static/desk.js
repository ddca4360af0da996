// The review desk's only script: keyboard shortcuts, the score's band as it
// is typed, a clear message for a bad score or too many questions, and
// watching a running result.
"use strict";

document.addEventListener("keydown", (event) => {
  const form = event.target.closest ? event.target.closest("form[data-shortcuts]") : null;
  const anyForm = form || document.querySelector("form[data-shortcuts]");
  if (event.key === "Enter" && (event.ctrlKey || event.metaKey) && anyForm) {
    event.preventDefault();
    anyForm.requestSubmit();
  } else if (event.altKey && (event.key === "s" || event.key === "S" || event.code === "KeyS")) {
    const skip = document.getElementById("review-skip");
    if (skip) {
      event.preventDefault();
      skip.click();
    }
  }
});

function bandOf(score) {
  let name = "";
  for (const item of document.querySelectorAll("#bands li")) {
    if (score >= Number(item.dataset.low)) name = item.dataset.name;
  }
  return name;
}

function checkScore(input) {
  const text = input.value.trim();
  const score = Number(text);
  let message = "";
  if (text === "") message = "Give a score from 0 to 100.";
  else if (!Number.isFinite(score) || score < 0 || score > 100) message = "The score must be from 0 to 100.";
  input.setCustomValidity(message);
  const output = document.getElementById("score-band");
  if (output) output.textContent = message || bandOf(score);
  return message === "";
}

const score = document.getElementById("review-score");
if (score) {
  score.addEventListener("input", () => checkScore(score));
  score.form.addEventListener("submit", (event) => {
    if (!checkScore(score)) {
      event.preventDefault();
      score.reportValidity();
    }
  });
}

// The question lists: at most MAX_QUESTIONS non-blank lines in both together,
// as the server takes (it says so too, when the page's check is bypassed).
const MAX_QUESTIONS = 32;
const lists = ["review-also", "review-never"].map((id) => document.getElementById(id));

function checkLists() {
  const count = lists.reduce((sum, area) =>
    sum + area.value.split("\n").filter((line) => line.trim() !== "").length, 0);
  const message = count > MAX_QUESTIONS
    ? `Give at most ${MAX_QUESTIONS} questions in both lists together (${count} now).` : "";
  for (const area of lists) area.setCustomValidity(message);
  return message === "";
}

if (lists.every((area) => area)) {
  for (const area of lists) area.addEventListener("input", checkLists);
  lists[0].form.addEventListener("submit", (event) => {
    if (!checkLists()) {
      event.preventDefault();
      lists[0].reportValidity();
    }
  });
}

// A pending or running result: follow its state until it is done or failed.
const watched = document.querySelector("[data-watch]");
if (watched) {
  const show = (id, text) => {
    const node = document.getElementById(id);
    if (node && text !== null && text !== undefined) node.textContent = text;
  };
  const poll = async () => {
    try {
      const reply = await fetch(watched.dataset.watch, {credentials: "same-origin"});
      if (reply.ok) {
        const record = await reply.json();
        const state = document.getElementById("record-state");
        state.textContent = record.state;
        state.className = "state state-" + record.state;
        show("record-answer", record.answer);
        show("record-model", record.model);
        if (record.latency_ms !== null) show("record-latency", record.latency_ms + " ms");
        if (record.state === "done" || record.state === "failed") {
          window.location.reload();
          return;
        }
      }
    } catch (error) {
      // The server or the network blinked: try again.
    }
    setTimeout(poll, 400);
  };
  setTimeout(poll, 200);
}
