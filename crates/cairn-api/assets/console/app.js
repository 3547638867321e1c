// Cairn console: a single-page app over Cairn's own HTTP API, with no build step
// and no third-party code. Views are chosen by the URL hash (#/conversations/ID,
// #/documents, #/tools, #/alerts). The token lives in sessionStorage (this tab
// only). A conversation's events are read as Server-Sent Events through fetch
// (EventSource cannot send an Authorization header), resumed after the last
// event id when the stream ends, and keyed by event id, so a reconnect or a
// reload never shows a step twice.

const $ = (id) => document.getElementById(id);
const TOKEN_KEY = "cairn.console.token";
const state = {
  token: sessionStorage.getItem(TOKEN_KEY),
  conversations: [],
  nextCursor: null,
  current: null, // the open conversation's id
  stream: null, // AbortController of its event stream
  events: new Map(), // event id -> event, for the open conversation
  live: new Map(), // turn id -> text streamed so far
  messages: [],
  docPolls: new Map(),
};

// ---- HTTP -------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, body) {
    const e = body && body.error ? body.error : {};
    super(e.message || `HTTP ${status}`);
    this.status = status;
    this.code = e.code || "http_" + status;
  }
}

async function api(method, path, body) {
  const headers = { Authorization: `Bearer ${state.token}` };
  const init = { method, headers };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const r = await fetch(path, init);
  if (r.status === 204) return null;
  const data = await r.json().catch(() => null);
  if (!r.ok) {
    if (r.status === 401 && path !== "/v1/conversations?limit=1") signOut("Your session ended: sign in again.");
    throw new ApiError(r.status, data);
  }
  return data;
}

function say(text) {
  $("status").textContent = text;
}

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") e.className = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) {
    if (c !== undefined && c !== null) e.append(c instanceof Node ? c : String(c));
  }
  return e;
}

// ---- Sign in ----------------------------------------------------------------

async function signIn(token) {
  state.token = token.trim();
  try {
    await api("GET", "/v1/conversations?limit=1");
  } catch (e) {
    state.token = null;
    throw e;
  }
  sessionStorage.setItem(TOKEN_KEY, state.token);
}

function signOut(reason) {
  closeStream();
  state.token = null;
  sessionStorage.removeItem(TOKEN_KEY);
  location.hash = "#/signin";
  if (reason) $("signin-error").textContent = reason;
}

async function showSignIn() {
  const cfg = await fetch("/console/config.json").then((r) => r.json()).catch(() => ({}));
  if (cfg.dev_token && !$("token").value) {
    $("token").value = cfg.dev_token;
    $("dev-hint").hidden = false;
  }
  $("token").focus();
}

// ---- Routing ----------------------------------------------------------------

const VIEWS = ["signin", "conversations", "documents", "tools", "alerts"];

async function route() {
  const [, view = "conversations", id] = location.hash.split("/");
  const name = state.token ? (VIEWS.includes(view) && view !== "signin" ? view : "conversations") : "signin";
  for (const v of VIEWS) $(`view-${v}`).hidden = v !== name;
  $("nav").hidden = !state.token;
  for (const a of document.querySelectorAll("#nav a")) {
    if (a.dataset.view === name) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  say("");
  try {
    if (name === "signin") return await showSignIn();
    if (name === "conversations") return await showConversations(id ? decodeURIComponent(id) : null);
    closeStream();
    state.current = null;
    if (name === "documents") return await showDocuments();
    if (name === "tools") return await showTools();
    if (name === "alerts") return await showAlerts();
  } catch (e) {
    say(`Could not load: ${e.message}`);
  }
}

// ---- Conversations ----------------------------------------------------------

async function loadConversations(more) {
  const cursor = more && state.nextCursor ? `&cursor=${encodeURIComponent(state.nextCursor)}` : "";
  const page = await api("GET", `/v1/conversations?limit=100${cursor}`);
  state.conversations = more ? state.conversations.concat(page.items) : page.items;
  state.nextCursor = page.next_cursor;
  renderConversationList();
}

function renderConversationList() {
  const q = $("search").value.trim().toLowerCase();
  const shown = state.conversations.filter(
    (c) => !q || (c.title || "").toLowerCase().includes(q) || c.id.toLowerCase().includes(q),
  );
  $("conversation-list").replaceChildren(
    ...shown.map((c) =>
      el(
        "li",
        {},
        el(
          "a",
          { href: `#/conversations/${encodeURIComponent(c.id)}`, "aria-current": c.id === state.current ? "true" : null },
          c.title || "Untitled conversation",
          el("small", {}, `${c.id} · ${new Date(c.created_at).toLocaleString()}`),
        ),
      ),
    ),
  );
  if (!shown.length) $("conversation-list").append(el("li", {}, q ? "No conversation matches." : "No conversations yet."));
  $("more-conversations").hidden = !state.nextCursor;
}

async function showConversations(id) {
  if (!state.conversations.length || !id) await loadConversations(false);
  if (id !== state.current) await openConversation(id);
  renderConversationList();
}

async function openConversation(id) {
  closeStream();
  state.current = id;
  state.events = new Map();
  state.live = new Map();
  state.messages = [];
  $("timeline").replaceChildren();
  $("chat").hidden = !id;
  $("details").hidden = !id;
  $("chat-error").textContent = "";
  if (!id) return;
  const meta = await api("GET", `/v1/conversations/${encodeURIComponent(id)}`);
  $("chat-title").textContent = meta.title || "Conversation";
  await refreshMessages();
  // Insights exist once a message was analysed.
  if (state.messages.length) await refreshInsights();
  followEvents(id, 0);
}

async function refreshMessages() {
  const id = state.current;
  const page = await api("GET", `/v1/conversations/${encodeURIComponent(id)}/messages?limit=1000`);
  if (id !== state.current) return;
  state.messages = page.items;
  renderMessages();
}

function citationList(citations) {
  if (!citations || !citations.length) return null;
  return el(
    "ol",
    { class: "citations", "aria-label": "Sources" },
    citations.map((c) =>
      el(
        "li",
        {},
        c.source === "conversation"
          ? "Earlier in this conversation"
          : el("a", { href: `#/documents/${encodeURIComponent(c.source)}`, class: "citation" }, c.title || c.source),
        c.section ? ` — ${c.section}` : "",
      ),
    ),
  );
}

function renderMessages() {
  const answered = new Set(state.messages.filter((m) => m.role === "assistant").map((m) => m.turn_id));
  const items = state.messages.map((m) =>
    el(
      "li",
      { class: `msg ${m.role}`, "data-turn": m.turn_id || null },
      el("span", { class: "role" }, m.role === "user" ? "You" : m.role === "assistant" ? "Agent" : m.role),
      m.content,
      citationList(m.citations),
    ),
  );
  for (const [turn, live] of state.live) {
    if (answered.has(turn)) continue;
    const cls = live.failed ? "msg assistant failed" : "msg assistant streaming";
    items.push(
      el(
        "li",
        { class: cls, "data-turn": turn, "aria-busy": live.failed ? null : "true" },
        el("span", { class: "role" }, live.failed ? "Agent (failed)" : "Agent (answering…)"),
        live.text,
        citationList(live.citations),
      ),
    );
  }
  const list = $("messages");
  const atBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 40;
  list.replaceChildren(...items);
  if (atBottom) list.scrollTop = list.scrollHeight;
}

async function refreshInsights() {
  const id = state.current;
  let i;
  try {
    i = await api("GET", `/v1/conversations/${encodeURIComponent(id)}/insights`);
  } catch (e) {
    if (e.status === 404) return;
    throw e;
  }
  if (id !== state.current || !i) return;
  const rows = [
    ["Summary", i.summary && i.summary.tldr],
    ["Sentiment", i.sentiment && `${i.sentiment.label} (${i.sentiment.trend})`],
    ["Intent", i.insights && i.insights.intent],
    ["Urgency", i.insights && i.insights.urgency],
    ["Escalation", i.insights && (i.insights.requires_escalation ? "needed" : "not needed")],
    ["PII", i.pii && (i.pii.detected ? i.pii.types.join(", ") : "none detected")],
  ].filter(([, v]) => v);
  $("insights").replaceChildren(...rows.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v)]));
}

// ---- The event stream -------------------------------------------------------

function closeStream() {
  if (state.stream) state.stream.abort();
  state.stream = null;
}

/// Follows the open conversation's events after `after`, reconnecting (after
/// the last id seen) when the stream ends: a server restart, a network drop.
async function followEvents(id, after) {
  const ctl = new AbortController();
  state.stream = ctl;
  let last = after;
  let retry = 1000;
  while (!ctl.signal.aborted && state.current === id) {
    try {
      const r = await fetch(`/v1/conversations/${encodeURIComponent(id)}/events?after=${last}`, {
        headers: { Authorization: `Bearer ${state.token}`, Accept: "text/event-stream" },
        signal: ctl.signal,
      });
      if (r.status === 401) return signOut("Your session ended: sign in again.");
      if (!r.ok) throw new ApiError(r.status, await r.json().catch(() => null));
      say("");
      for await (const ev of sseEvents(r.body)) {
        if (ev.retry) retry = ev.retry;
        if (ev.event === "error") {
          const why = JSON.parse(ev.data || "{}");
          if (why.code === "token_expired") return signOut("Your token expired: sign in again.");
          if (why.code === "conversation_deleted") return say("This conversation was deleted.");
          say("The server is restarting; reconnecting…");
          continue;
        }
        if (!ev.id) continue;
        last = Math.max(last, Number(ev.id));
        onEvent(Number(ev.id), JSON.parse(ev.data));
      }
    } catch (e) {
      if (ctl.signal.aborted) return;
      say(`Event stream interrupted (${e.message}); reconnecting…`);
    }
    await new Promise((ok) => setTimeout(ok, retry));
  }
}

/// Parses a text/event-stream body into {id, event, data, retry} records.
async function* sseEvents(body) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buf = "";
  let ev = { data: [] };
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buf += value;
    let nl;
    while ((nl = buf.indexOf("\n")) >= 0) {
      const line = buf.slice(0, nl).replace(/\r$/, "");
      buf = buf.slice(nl + 1);
      if (line === "") {
        if (ev.data.length || ev.event) yield { ...ev, data: ev.data.join("\n") };
        ev = { data: [] };
        continue;
      }
      if (line.startsWith(":")) continue;
      const i = line.indexOf(":");
      const field = i < 0 ? line : line.slice(0, i);
      const val = i < 0 ? "" : line.slice(i + 1).replace(/^ /, "");
      if (field === "data") ev.data.push(val);
      else if (field === "id") ev.id = val;
      else if (field === "event") ev.event = val;
      else if (field === "retry" && /^\d+$/.test(val)) ev.retry = Number(val);
    }
  }
}

function onEvent(id, e) {
  if (state.events.has(id)) return; // already shown (a replay after a reconnect)
  state.events.set(id, e);
  const turn = e.turn_id;
  switch (e.type) {
    case "answer.delta": {
      const live = state.live.get(turn) || { text: "" };
      live.text += e.delta;
      state.live.set(turn, live);
      renderMessages();
      return; // deltas are not steps
    }
    case "turn.started":
      if (!state.live.has(turn)) state.live.set(turn, { text: "" });
      break;
    case "answer.completed":
      state.live.set(turn, { text: e.content, citations: e.citations });
      refreshMessages().catch((err) => say(err.message));
      break;
    case "turn.failed":
      state.live.set(turn, { text: e.reason || "The turn failed.", failed: true });
      refreshMessages().catch((err) => say(err.message));
      break;
    case "insights.updated":
      refreshInsights().catch((err) => say(err.message));
      break;
  }
  renderMessages();
  addStep(id, e);
}

const STEP_TITLES = {
  "turn.started": (e) => (e.resumed ? "Turn resumed" : "Turn started"),
  "agent.selected": (e) => `Agent: ${e.agent || e.profile || "selected"}`,
  "agent.handoff": (e) => `Handoff to ${e.to || "another agent"}`,
  "tool.called": (e) => `Tool call: ${e.tool}`,
  "tool.completed": (e) => `Tool result: ${e.tool}${e.is_error ? " (error)" : ""} · ${e.duration_ms} ms`,
  "answer.completed": (e) =>
    `Model answer${e.metadata ? ` · ${e.metadata.provider}/${e.metadata.model}` : ""}` +
    (e.usage ? ` · ${e.usage.input_tokens} in / ${e.usage.output_tokens} out tokens` : ""),
  "turn.failed": (e) => `Turn failed: ${e.code || ""}`,
  "turn.cancel_requested": (e) => `Cancel requested (${e.mode}) by ${e.by}`,
  "turn.cancelled": (e) => `Turn cancelled (${e.mode})`,
  "approval.requested": (e) => `Approval needed: ${e.tool} (${e.reason})`,
  "approval.decided": (e) => `Approval ${e.decision} by ${e.by}`,
  "insights.updated": () => "Insights updated",
  "alert.firing": (e) => `Alert firing: ${e.name || ""}`,
  "alert.resolved": (e) => `Alert resolved: ${e.name || ""}`,
};

function stepDetail(e) {
  switch (e.type) {
    case "tool.called":
      return JSON.stringify(e.arguments, null, 2);
    case "tool.completed":
      return typeof e.output === "string" ? e.output : JSON.stringify(e.output, null, 2);
    case "answer.completed":
      return e.content;
    case "turn.failed":
      return e.reason;
    default:
      return null;
  }
}

function addStep(id, e) {
  const title = STEP_TITLES[e.type] ? STEP_TITLES[e.type](e) : e.type;
  const detail = stepDetail(e);
  $("timeline").append(
    el(
      "li",
      { class: "step", "data-event-id": id, "data-kind": e.type },
      el("span", { class: "kind" }, title),
      e.turn_id ? el("span", { class: "turn" }, `turn ${e.turn_id}`) : null,
      detail ? el("pre", {}, detail) : null,
      e.type === "answer.completed" ? citationList(e.citations) : null,
    ),
  );
}

async function send(text) {
  const id = state.current;
  await api("POST", `/v1/conversations/${encodeURIComponent(id)}/messages`, { content: text });
}

// ---- Documents --------------------------------------------------------------

async function showDocuments() {
  const page = await api("GET", "/v1/documents?limit=100");
  $("document-rows").replaceChildren(...page.items.map(documentRow));
  for (const d of page.items) if (!isFinal(d.job.status)) pollDocument(d.document_id);
  if (!page.items.length) $("document-rows").append(el("tr", {}, el("td", { colspan: 5 }, "No documents yet.")));
  const [, , id] = location.hash.split("/");
  if (id) {
    const row = document.querySelector(`tr[data-document="${CSS.escape(decodeURIComponent(id))}"]`);
    if (row) {
      row.scrollIntoView();
      row.classList.add("selected");
      row.querySelector("th").setAttribute("tabindex", "-1");
      row.querySelector("th").focus();
    }
  }
}

const isFinal = (s) => s === "done" || s === "failed";

function documentRow(d) {
  const title = d.title || d.source || d.document_id;
  return el(
    "tr",
    { "data-document": d.document_id },
    el("th", { scope: "row" }, title),
    el("td", {}, d.document_id),
    el("td", {}, el("span", { class: `badge ${d.job.status}`, "data-status": d.job.status }, d.job.status), d.job.error ? ` ${d.job.error}` : ""),
    el("td", {}, d.chunks ?? ""),
    el(
      "td",
      {},
      el("button", { type: "button", class: "danger", "aria-label": `Delete ${title}`, onclick: () => deleteDocument(d.document_id, title) }, "Delete"),
    ),
  );
}

function pollDocument(id) {
  if (state.docPolls.has(id)) return;
  const tick = async () => {
    try {
      const d = await api("GET", `/v1/documents/${encodeURIComponent(id)}`);
      const row = document.querySelector(`tr[data-document="${CSS.escape(id)}"]`);
      if (row) row.replaceWith(documentRow(d));
      if (isFinal(d.job.status)) {
        state.docPolls.delete(id);
        say(`${d.title || id}: ${d.job.status}`);
        return;
      }
    } catch (e) {
      state.docPolls.delete(id);
      return;
    }
    state.docPolls.set(id, setTimeout(tick, 500));
  };
  state.docPolls.set(id, setTimeout(tick, 300));
}

async function deleteDocument(id, title) {
  try {
    await api("DELETE", `/v1/documents/${encodeURIComponent(id)}`);
    say(`Deleted ${title}`);
    await showDocuments();
  } catch (e) {
    $("upload-error").textContent = e.message;
  }
}

/// Uploads with XMLHttpRequest: fetch cannot report upload progress.
function upload(form) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", "/v1/documents");
    xhr.setRequestHeader("Authorization", `Bearer ${state.token}`);
    xhr.responseType = "json";
    xhr.upload.onprogress = (ev) => {
      if (ev.lengthComputable) $("upload-progress").value = Math.round((100 * ev.loaded) / ev.total);
    };
    xhr.onload = () => (xhr.status === 202 ? resolve(xhr.response) : reject(new ApiError(xhr.status, xhr.response)));
    xhr.onerror = () => reject(new Error("the upload failed"));
    xhr.send(form);
  });
}

// ---- Tools and alerts -------------------------------------------------------

async function showTools() {
  const t = await api("GET", "/v1/tools");
  $("server-list").replaceChildren(
    ...t.servers.map((s) =>
      el(
        "li",
        {},
        el("strong", {}, s.name),
        " ",
        el("span", { class: `badge ${s.health}` }, s.health),
        s.last_error ? el("small", {}, `last error: ${s.last_error}`) : null,
        el("small", {}, `tools: ${s.tools.join(", ") || "none"}`),
      ),
    ),
  );
  if (!t.servers.length) $("server-list").append(el("li", {}, "No MCP servers are configured."));
  $("tool-list").replaceChildren(...t.tools.map((x) => el("li", {}, el("strong", {}, x.name), el("small", {}, x.description || ""))));
}

async function showAlerts() {
  let a;
  try {
    a = await api("GET", "/v1/alerts");
  } catch (e) {
    $("alert-list").replaceChildren(el("li", {}, e.status === 403 ? "Your token lacks the alerts scope." : e.message));
    return;
  }
  $("alert-list").replaceChildren(
    ...a.alerts.map((x) =>
      el(
        "li",
        {},
        el("strong", {}, x.labels.alertname || x.fingerprint),
        " ",
        el("span", { class: `badge ${x.status.state || x.status}` }, x.status.state || x.status),
        el("small", {}, `${x.annotations.summary || ""} · since ${new Date(x.startsAt).toLocaleString()}`),
      ),
    ),
  );
  if (!a.alerts.length) $("alert-list").append(el("li", {}, "No alerts."));
}

// ---- Wiring -----------------------------------------------------------------

function wire() {
  $("signin-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    $("signin-error").textContent = "";
    try {
      await signIn($("token").value);
      location.hash = "#/conversations";
      route();
    } catch (e) {
      $("signin-error").textContent = e.status === 401 ? "That token was refused. Check it and try again." : e.message;
    }
  });
  $("sign-out").addEventListener("click", () => signOut(""));
  $("search").addEventListener("input", renderConversationList);
  $("more-conversations").addEventListener("click", () => loadConversations(true).catch((e) => say(e.message)));
  $("new-conversation").addEventListener("click", async () => {
    try {
      const c = await api("POST", "/v1/conversations", {});
      state.conversations.unshift(c);
      location.hash = `#/conversations/${encodeURIComponent(c.id)}`;
    } catch (e) {
      say(e.message);
    }
  });
  $("composer").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const text = $("message").value.trim();
    if (!text) return;
    $("chat-error").textContent = "";
    try {
      await send(text);
      $("message").value = "";
      await refreshMessages();
    } catch (e) {
      $("chat-error").textContent = e.message;
    }
  });
  $("message").addEventListener("keydown", (ev) => {
    if (ev.key === "Enter" && (ev.ctrlKey || ev.metaKey)) $("composer").requestSubmit();
  });
  $("toggle-steps").addEventListener("click", () => {
    const open = $("timeline").hidden;
    $("timeline").hidden = !open;
    $("toggle-steps").setAttribute("aria-expanded", String(open));
    $("toggle-steps").textContent = open ? "Hide steps" : "Show steps";
  });
  $("upload-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    $("upload-error").textContent = "";
    $("upload-progress").value = 0;
    const form = new FormData();
    form.append("file", $("file").files[0]);
    if ($("doc-title").value.trim()) form.append("title", $("doc-title").value.trim());
    try {
      const r = await upload(form);
      say(`Uploaded; ingesting ${r.document_id}…`);
      $("upload-form").reset();
      await showDocuments();
      pollDocument(r.document_id);
    } catch (e) {
      $("upload-error").textContent = e.message;
    }
  });
  window.addEventListener("hashchange", route);
}

wire();
route();
