"use strict";
// The board's two pages. Everything agents wrote (prompts, outputs, logs, diffs, branch names,
// notes, egress records) reaches the page as JSON strings and is shown with textContent or as
// text nodes: never parsed as HTML, never put in a URL. The server's Content-Security-Policy
// forbids inline script as a second wall, not as the first.

const STATES = [
  "submitted", "queued", "blocked", "starting", "running",
  "success", "failed", "timeout", "cancelled", "interrupted", "budget_exceeded",
];
const CANCELLABLE = new Set(["submitted", "queued", "starting", "running"]);
const RETRYABLE = new Set(["blocked", "failed", "timeout", "cancelled", "interrupted", "budget_exceeded"]);
const LOG_LIMIT = 2_000_000; // characters of log kept on the page; older lines are dropped
const DIFF_LINE_LIMIT = 20_000;

// ---- Building the DOM: elements and text nodes, nothing else.

function h(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(props)) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "class") node.className = value;
    else if (name === "text") node.textContent = value;
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children) {
    if (child !== null && child !== undefined && child !== false) node.append(child); // a string becomes a text node
  }
  return node;
}

function $(id) {
  return document.getElementById(id);
}

// Task ids are checked by the server before they reach a page; encoded all the same.
function taskHref(id) {
  return "/tasks/" + encodeURIComponent(id);
}

function taskLink(id) {
  return h("a", { href: taskHref(id), text: id });
}

// Terminal colours stripped; characters that hide or reorder text (bidi overrides, zero-width
// marks, control characters) shown as their code, so what is read is what is there.
const ANSI = /\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)/g;
const HIDDEN = /[\u0000-\u0008\u000b\u000c\u000e-\u001f\u007f\u200b-\u200f\u202a-\u202e\u2060-\u2069\ufeff]/g;

function visible(text) {
  return String(text ?? "")
    .replace(ANSI, "")
    .replace(/\r\n?/g, "\n")
    .replace(HIDDEN, (c) => `⟨U+${c.codePointAt(0).toString(16).toUpperCase().padStart(4, "0")}⟩`);
}

function stateLabel(state) {
  const label = String(state).replace(/_/g, " ");
  return label.charAt(0).toUpperCase() + label.slice(1);
}

function badge(state) {
  return h("span", { class: "badge", "data-state": state, text: stateLabel(state) });
}

function money(value) {
  return typeof value === "number" ? `$${value.toFixed(2)}` : "–";
}

function duration(seconds) {
  if (typeof seconds !== "number") return "–";
  const s = Math.floor(seconds);
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${String(s % 60).padStart(2, "0")}s`;
  return `${Math.floor(s / 3600)}h ${String(Math.floor((s % 3600) / 60)).padStart(2, "0")}m`;
}

function clock(stamp) {
  const when = stamp ? new Date(stamp) : null;
  if (!when || Number.isNaN(when.getTime())) return "–";
  return h("time", { datetime: when.toISOString(), title: when.toISOString(), text: when.toLocaleTimeString() });
}

function plural(count, one, many) {
  return `${count} ${count === 1 ? one : many}`;
}

function pause(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

// ---- Talking to the server.

let csrfToken = null;

async function api(path, options = {}) {
  const response = await fetch(path, { credentials: "same-origin", cache: "no-store", ...options });
  if (response.status === 401) {
    location.assign("/login");
    throw new Error("The session ended: log in again.");
  }
  const body = await response.json().catch(() => null);
  if (!response.ok) throw new Error((body && body.error) || `The board answered ${response.status}.`);
  return body;
}

async function post(path) {
  if (csrfToken === null) csrfToken = (await api("/api/session")).csrf;
  return api(path, { method: "POST", headers: { "X-CSRF-Token": csrfToken } });
}

function say(text, isError = false) {
  const status = $("action-status");
  status.textContent = text;
  status.classList.toggle("error-text", isError);
}

async function act(button, path, doing, after) {
  button.disabled = true;
  button.setAttribute("aria-busy", "true");
  say(doing);
  try {
    const answer = await post(path);
    if (after) after(answer);
    else say(answer.message);
  } catch (error) {
    say(error.message, true);
  } finally {
    button.removeAttribute("aria-busy");
    button.disabled = false;
  }
}

function showLive(isLive) {
  const connection = $("connection");
  connection.textContent = isLive ? "live" : "reconnecting…";
  connection.classList.toggle("offline", !isLive);
}

// The board, sent by the server each time it changes (server-sent events); after a refusal or a
// lost connection, /api/board tells why (a 401 leads to the login page) and the stream starts again.
// A stream holds one of the six connections a browser opens to a host, so a hidden tab lets go
// of it, and gets the board whole when it is shown again.
function followBoard(onBoard) {
  let source = null;
  function connect() {
    if (source !== null || document.hidden) return;
    source = new EventSource("/api/events");
    const mine = source;
    source.addEventListener("board", (event) => {
      showLive(true);
      onBoard(JSON.parse(event.data));
    });
    source.addEventListener("error", () => {
      showLive(false);
      if (mine.readyState === EventSource.CLOSED && source === mine) {
        source = null;
        api("/api/board").then(onBoard).catch(() => {}).finally(() => setTimeout(connect, 2000));
      }
    });
  }
  document.addEventListener("visibilitychange", () => {
    if (document.hidden && source !== null) {
      source.close();
      source = null;
    } else {
      connect();
    }
  });
  connect();
}

function setUpLogout() {
  $("logout").addEventListener("click", () =>
    act($("logout"), "/api/logout", "Logging out…", () => location.assign("/login")),
  );
}

// ---- The board.

function boardPage() {
  const columns = new Map(); // state -> {section, list, count}
  const cards = new Map(); // id -> {item, body, state, json}
  let first = true;

  for (const state of STATES) {
    const count = h("span", { class: "count" });
    const list = h("ol", { class: "cards" });
    const section = h(
      "section",
      { class: "column", "data-state": state, "aria-label": stateLabel(state), hidden: true },
      h("h3", {}, h("span", { class: "dot", "aria-hidden": "true" }), stateLabel(state), " ", count),
      list,
    );
    $("columns").append(section);
    columns.set(state, { section, list, count });
  }

  function cardBody(card) {
    const meta = h("p", { class: "meta" });
    if (card.seconds !== null) meta.append(h("span", { title: "time", text: duration(card.seconds) }));
    if (card.turns !== null) meta.append(h("span", { text: plural(card.turns, "turn", "turns") }));
    if (card.cost_usd !== null) meta.append(h("span", { text: money(card.cost_usd) }));
    const deps = card.depends_on.length ? h("p", { class: "deps" }, "after ") : null;
    card.depends_on.forEach((dep, i) => deps.append(i ? ", " : "", taskLink(dep)));
    return [
      h("p", { class: "title", text: visible(card.title) || "(no prompt)" }),
      meta.childElementCount ? meta : null,
      deps,
      card.branch ? h("p", { class: "branch", text: visible(card.branch) }) : null,
      card.note ? h("p", { class: "note", text: visible(card.note) }) : null,
    ].filter(Boolean);
  }

  function renderTotals(totals, taskCount) {
    const item = (label, ...value) => h("div", { class: "total" }, h("dt", { text: label }), h("dd", {}, ...value));
    const spent = totals.budget_usd === null ? money(totals.cost_usd) : `${money(totals.cost_usd)} of ${money(totals.budget_usd)}`;
    const cost = item("Cost", spent);
    if (totals.budget_usd) {
      cost.lastChild.append(h("meter", {
        min: 0, max: totals.budget_usd, value: Math.min(totals.cost_usd, totals.budget_usd),
        high: totals.budget_usd * 0.8, optimum: 0, "aria-label": "budget spent",
      }));
    }
    const workers = totals.workers_limit === null
      ? String(totals.workers_running)
      : `${totals.workers_running} of ${totals.workers_limit}`;
    const running = totals.by_state.running || 0;
    const finished = ["success", "failed", "timeout", "cancelled", "interrupted", "budget_exceeded"]
      .reduce((sum, state) => sum + (totals.by_state[state] || 0), 0);
    $("totals").replaceChildren(
      item("Tasks", `${taskCount}`, h("span", { class: "muted", text: ` · ${running} running · ${finished} finished` })),
      cost,
      item("Workers", workers),
      item("API", totals.rate_limit === null ? "–" : visible(totals.rate_limit)),
    );
  }

  function render(board) {
    renderTotals(board.totals, board.tasks.length);
    const seen = new Set();
    const moved = [];
    for (const card of board.tasks) {
      seen.add(card.id);
      const json = JSON.stringify(card);
      let entry = cards.get(card.id);
      if (!entry) {
        const body = h("div", { class: "card-body" });
        const item = h("li", { class: "card", "data-id": card.id }, h("h4", {}, taskLink(card.id)), body);
        entry = { item, body, state: null, json: null };
        cards.set(card.id, entry);
      }
      if (entry.json !== json) entry.body.replaceChildren(...cardBody(card));
      if (entry.state !== null && entry.state !== card.state) moved.push(`${card.id} is now ${stateLabel(card.state)}.`);
      entry.state = card.state;
      entry.json = json;
    }
    for (const [id, entry] of cards) {
      if (!seen.has(id)) {
        entry.item.remove();
        cards.delete(id);
      }
    }
    // Cards in the board's order, each in its state's column; a card that had the focus keeps it.
    const focused = document.activeElement;
    for (const { section, list, count } of columns.values()) {
      const state = section.dataset.state;
      const wanted = board.tasks.filter((card) => card.state === state).map((card) => cards.get(card.id).item);
      const current = Array.from(list.children);
      if (wanted.length !== current.length || wanted.some((item, i) => item !== current[i])) list.replaceChildren(...wanted);
      count.textContent = String(wanted.length);
      section.hidden = wanted.length === 0;
    }
    if (focused && focused !== document.activeElement && document.contains(focused)) focused.focus();
    $("no-tasks").hidden = board.tasks.length > 0;
    if (!first && moved.length) $("announce").textContent = moved.join(" ");
    first = false;
    document.body.dataset.ready = "true";
  }

  function showMerge(summary) {
    const outcomes = summary.outcomes.map((outcome) =>
      h(
        "li",
        { class: "outcome", "data-state": outcome.state.replace(/ /g, "_") },
        taskLink(outcome.task_id),
        " ",
        h("span", { class: "outcome-state", text: visible(outcome.state) }),
        outcome.message ? h("span", { class: "muted", text: ` — ${visible(outcome.message)}` }) : null,
        outcome.files.length ? h("ul", { class: "files" }, ...outcome.files.map((f) => h("li", { text: visible(f) }))) : null,
      ),
    );
    const counts = {};
    summary.outcomes.forEach((o) => (counts[o.state] = (counts[o.state] || 0) + 1));
    const tally = Object.entries(counts).map(([state, n]) => `${n} ${state}`).join(", ") || "nothing to merge";
    $("merge-summary").textContent =
      (summary.into ? `Into ${visible(summary.into)}: ${tally}.` : `${tally}.`) + (summary.message ? ` ${visible(summary.message)}` : "");
    $("merge-outcomes").replaceChildren(...outcomes);
    $("merge-report").hidden = false;
    say(`Merge done: ${tally}.`);
    $("merge-title").focus();
  }

  $("merge").addEventListener("click", () => act($("merge"), "/api/merge", "Merging…", showMerge));
  setUpLogout();
  api("/api/board").then(render).catch((error) => say(error.message, true));
  followBoard(render);
}

// ---- A task's page.

function taskPage() {
  const id = decodeURIComponent(location.pathname.split("/")[2] || "");
  const path = `/api/tasks/${encodeURIComponent(id)}`;
  let card = null;
  let detail = null;
  let logOffset = 0;
  let logLength = 0;
  let following = false;
  document.title = `${id} · Batch board`;
  $("task-id").textContent = id;

  function field(label, ...value) {
    return h("div", { class: "field" }, h("dt", { text: label }), h("dd", {}, ...value));
  }

  function renderFields() {
    if (!card) return;
    const state = $("task-state");
    state.textContent = stateLabel(card.state);
    state.dataset.state = card.state;
    const files = detail ? detail.files_changed : [];
    const fields = [
      field("Status", badge(card.state)),
      detail && detail.attempt ? field("Attempt", String(detail.attempt)) : null,
      field("Started", clock(card.started_at)),
      field(CANCELLABLE.has(card.state) ? "Elapsed" : "Duration", duration(card.seconds)),
      field("Turns", card.turns === null ? "–" : String(card.turns)),
      field("Cost", money(card.cost_usd)),
      field("Branch", card.branch ? h("code", { text: visible(card.branch) }) : "–"),
      field("Commits", detail && detail.commits !== null ? String(detail.commits) : "–"),
      field("Files changed", files.length ? String(files.length) : "–"),
      card.depends_on.length ? field("Depends on", ...card.depends_on.flatMap((dep, i) => [i ? ", " : "", taskLink(dep)])) : null,
      card.note && !(detail && detail.error) ? field("Note", visible(card.note)) : null,
    ];
    $("result-fields").replaceChildren(...fields.filter(Boolean));
    $("cancel").hidden = !CANCELLABLE.has(card.state);
    $("retry").hidden = !RETRYABLE.has(card.state);
  }

  function renderDetail() {
    $("prompt").textContent = visible(detail.prompt);
    $("output").textContent = detail.output ? visible(detail.output) : "";
    $("output-section").hidden = !detail.output;
    $("error").textContent = detail.error ? visible(detail.error) : "";
    $("error").hidden = !detail.error;
    renderFields();
  }

  function renderDiff(diff) {
    const files = $("diff-files");
    const pre = $("diff");
    if (!diff) {
      $("diff-state").textContent = "No changes yet.";
      files.replaceChildren();
      pre.replaceChildren();
      pre.hidden = true;
      return;
    }
    files.replaceChildren(
      ...diff.files.map((f) =>
        h(
          "li",
          {},
          h("code", { text: visible(f.path) }),
          " ",
          f.added === null ? h("span", { class: "muted", text: "binary" }) : h("span", { class: "added", text: `+${f.added}` }),
          f.deleted === null ? null : h("span", { class: "deleted", text: ` −${f.deleted}` }),
        ),
      ),
    );
    const lines = visible(diff.diff).split("\n");
    if (lines.length && lines[lines.length - 1] === "") lines.pop();
    const shown = lines.slice(0, DIFF_LINE_LIMIT);
    const fragment = document.createDocumentFragment();
    for (const line of shown) {
      let kind = "context";
      if (line.startsWith("diff ") || line.startsWith("index ") || line.startsWith("+++") || line.startsWith("---")) kind = "meta";
      else if (line.startsWith("@@")) kind = "hunk";
      else if (line.startsWith("+")) kind = "add";
      else if (line.startsWith("-")) kind = "del";
      fragment.append(h("span", { class: `line ${kind}`, text: line + "\n" }));
    }
    pre.replaceChildren(fragment);
    pre.hidden = shown.length === 0;
    const cut = diff.truncated || lines.length > shown.length;
    $("diff-state").textContent =
      `${plural(diff.files.length, "file", "files")} changed.` + (cut ? " The diff is too large to show whole; the start is below." : "");
  }

  function renderEgress(records) {
    $("egress-section").hidden = records.length === 0;
    if (!records.length) return;
    const columns = [];
    for (const record of records) for (const key of Object.keys(record)) if (!columns.includes(key) && columns.length < 8) columns.push(key);
    const cell = (value) => (value === null || value === undefined ? "" : typeof value === "object" ? JSON.stringify(value) : String(value));
    $("egress").replaceChildren(
      h("thead", {}, h("tr", {}, ...columns.map((c) => h("th", { scope: "col", text: visible(c) })))),
      h("tbody", {}, ...records.map((r) => h("tr", {}, ...columns.map((c) => h("td", { text: visible(cell(r[c])) }))))),
    );
  }

  async function loadChanges() {
    const [diff, egress] = await Promise.all([api(`${path}/diff`), api(`${path}/egress`)]);
    renderDiff(diff);
    renderEgress(egress);
  }

  function appendLog(text) {
    const pre = $("log");
    const atEnd = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
    pre.append(visible(text));
    logLength += text.length;
    while (logLength > LOG_LIMIT && pre.firstChild) {
      logLength -= pre.firstChild.textContent.length;
      pre.firstChild.remove();
      $("log-state").textContent = "The start of the log is left out.";
    }
    if (atEnd) pre.scrollTop = pre.scrollHeight;
  }

  // The log, followed from where the page has it: again at once while it grows, each second
  // while it waits, not at all once the task has settled and the last line is in.
  async function followLog() {
    if (following) return;
    following = true;
    $("log-state").textContent = "Following the log…";
    try {
      for (;;) {
        const chunk = await api(`${path}/log?offset=${logOffset}`);
        if (chunk.text) appendLog(chunk.text);
        logOffset = chunk.next_offset;
        if (chunk.finished && !chunk.text) break;
        if (!chunk.text) await pause(1000);
      }
      $("log-state").textContent = logLength ? "The task has ended; this is its whole log." : "The task printed nothing.";
    } catch (error) {
      $("log-state").textContent = `The log stopped: ${error.message}`;
    } finally {
      following = false;
    }
  }

  async function onDetail(next) {
    const wasState = card ? card.state : null;
    const changed = JSON.stringify(next) !== JSON.stringify(detail);
    detail = next;
    card = next.card;
    if (changed) renderDetail();
    if (wasState === card.state) return;
    if (wasState !== null) {
      if (RETRYABLE.has(wasState) || wasState === "success") {
        // Run again (retry): a new attempt, with a log of its own.
        logOffset = 0;
        logLength = 0;
        $("log").replaceChildren();
      }
      followLog();
    }
    await loadChanges().catch((error) => say(error.message, true));
  }

  // The task, asked for each second (each five while the tab is hidden): an event stream per
  // task tab would soon use up the browser's six connections to the board.
  async function watchTask() {
    for (;;) {
      try {
        await onDetail(await api(path));
        showLive(true);
        document.body.dataset.ready = "true";
      } catch (error) {
        showLive(false);
        if (!detail) say(error.message, true);
      }
      await pause(document.hidden ? 5000 : 1000);
    }
  }

  $("cancel").addEventListener("click", () => act($("cancel"), `${path}/cancel`, "Cancelling…"));
  $("retry").addEventListener("click", () => act($("retry"), `${path}/retry`, "Asking for a retry…"));
  setUpLogout();
  watchTask();
  followLog();
}

if (document.body.dataset.page === "board") boardPage();
else if (document.body.dataset.page === "task") taskPage();
