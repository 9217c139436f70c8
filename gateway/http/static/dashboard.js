// The gateway's live dashboard: sign in (cookie session), pick filters, watch the stream.
// No framework and no build step; every value from the server goes in as text, never HTML.
// The tab keeps its last event id and the rows it shows (sessionStorage, bounded), so a
// reload resumes after that id (?lastEventId=) instead of starting empty.
"use strict";

(() => {
  const STREAM_PATH = "/stream/kernel/_/events";
  const TIMELINE_CAP = 500;
  const SESSION_CAP = 1000;
  const NOTICE_CAP = 6;
  // How long a notice stays (ms) unless its condition ends first; 0: until it ends.
  const NOTICE_MS = { ok: 10000, info: 0, warn: 60000 };
  const STORE_KEY = "kev-dashboard";
  const STORE_TIMELINE = 200; // timeline events a reload brings back
  const STORE_SESSIONS = 500; // session rows a reload brings back
  const SAVE_MS = 500;
  const FLUSH_MS = 50; // batch DOM updates; a timer (unlike rAF) still runs in hidden tabs
  const RETRY_MIN_MS = 1000;
  const RETRY_MAX_MS = 10000;
  const KERNEL_EVENTS = [
    "kernel_enqueued", "kernel_preparing", "kernel_pulling", "kernel_creating",
    "kernel_started", "kernel_terminating", "kernel_terminated", "kernel_cancelled",
    "kernel_success", "kernel_failure",
  ];
  // The colour family of each state: on its way, running, ended, ended well, ended badly.
  const TONE = {
    kernel_enqueued: "pending", kernel_preparing: "pending", kernel_pulling: "pending",
    kernel_creating: "pending", kernel_started: "running", kernel_terminating: "pending",
    kernel_terminated: "done", kernel_cancelled: "bad", kernel_success: "good",
    kernel_failure: "bad",
  };
  const CONN_LABEL = {
    idle: "Not connected", connecting: "Connecting…", live: "Live",
    reconnecting: "Reconnecting…", refused: "Refused",
  };

  const ui = {};
  const state = {
    source: null,
    generation: 0, // bumped whenever a stream is dropped on purpose; stale callbacks check it
    conn: "idle",
    filters: { sessionId: "", group: "", owner: "" }, // sent to the gateway
    type: "", // an event name, or "" for all: applied here, the stream carries every type
    accessKey: "", // whose view the stored snapshot is
    lastEventId: "",
    reconnects: 0,
    events: 0,
    retryDelay: RETRY_MIN_MS,
    retryTimer: 0,
    pending: [],
    flushTimer: 0,
    sessions: new Map(), // owner key + "\0" + session id -> { row, cells, result, last }
    timelineLog: [], // the timeline's events, oldest first, as stored for a reload
    saveTimer: 0,
  };

  // -- small helpers ---------------------------------------------------------------------------

  const byId = (id) => document.getElementById(id);

  function node(tag, className, text) {
    const el = document.createElement(tag);
    if (className) el.className = className;
    if (text !== undefined) el.textContent = text;
    return el;
  }

  // A Redis stream id starts with the milliseconds at which the event was stored. A stream
  // that spans partitions (admins) carries a vector id instead, one position per partition
  // (`<n>_<ms>-<seq>_<ms>-<seq>...`, publisher/partitions.py): its largest <ms>, the newest
  // position, is the event's (or, when partitions' events interleave, close to it).
  function eventDate(id) {
    const MAX_MS = 8.64e15; // beyond it a Date is invalid (and toISOString throws)
    const text = String(id || "");
    const parts = text.includes("_") ? text.split("_").slice(1) : [text];
    let ms = 0;
    for (const part of parts) {
      const value = Number.parseInt(part.split("-")[0], 10);
      if (Number.isFinite(value) && value > ms && value <= MAX_MS) ms = value;
    }
    return ms > 0 ? new Date(ms) : new Date();
  }

  // Text that may be longer than its column: cut with an ellipsis, whole in the tooltip.
  function cutNode(tag, className, text) {
    const el = node(tag, className ? `cut ${className}` : "cut", text);
    el.title = text;
    return el;
  }

  function timeNode(date) {
    const pad = (n, w = 2) => String(n).padStart(w, "0");
    const text = `${pad(date.getHours())}:${pad(date.getMinutes())}:${pad(date.getSeconds())}` +
      `.${pad(date.getMilliseconds(), 3)}`;
    const el = node("time", "when", text);
    el.dateTime = date.toISOString();
    el.title = date.toLocaleString();
    return el;
  }

  function shortName(name) {
    return name.startsWith("kernel_") ? name.slice(7) : name;
  }

  async function problemText(response) {
    try {
      const problem = await response.json();
      const text = [problem.title, problem.msg].filter(Boolean).join(": ");
      return text || `HTTP ${response.status}`;
    } catch {
      return `HTTP ${response.status}`;
    }
  }

  // -- views -----------------------------------------------------------------------------------

  function showView(name) {
    document.body.dataset.view = name;
    ui.loginView.hidden = name !== "login";
    ui.dashboardView.hidden = name !== "dashboard";
    ui.who.hidden = name !== "dashboard";
  }

  function setConn(conn) {
    state.conn = conn;
    ui.connState.dataset.state = conn;
    ui.connState.textContent = CONN_LABEL[conn];
    ui.reconnects.textContent = String(state.reconnects);
    document.body.dataset.connection = conn;
  }

  // A notice with a topic replaces the previous one of that topic, and clearNotices(topic)
  // takes it away once its condition is over; every kind but info also expires by itself.
  function addNotice(kind, text, topic = "") {
    if (topic) clearNotices(topic);
    const item = node("li", `notice notice-${kind}`);
    item.dataset.kind = kind;
    item.dataset.topic = topic;
    item.append(timeNode(new Date()), node("span", "notice-text", text));
    const dismiss = node("button", "dismiss", "×");
    dismiss.type = "button";
    dismiss.setAttribute("aria-label", "Dismiss notice");
    dismiss.addEventListener("click", () => item.remove());
    item.append(dismiss);
    ui.notices.prepend(item);
    if (NOTICE_MS[kind]) setTimeout(() => item.remove(), NOTICE_MS[kind]);
    while (ui.notices.childElementCount > NOTICE_CAP) ui.notices.lastElementChild.remove();
  }

  function clearNotices(topic) {
    for (const item of [...ui.notices.children]) {
      if (topic === undefined || item.dataset.topic === topic) item.remove();
    }
  }

  function showStreamError(text) {
    ui.streamError.textContent = text;
    ui.streamError.hidden = !text;
  }

  // -- signing in and out ----------------------------------------------------------------------

  function loginMethod() {
    return ui.loginForm.elements.namedItem("method").value;
  }

  function syncLoginMethod() {
    const keypair = loginMethod() === "keypair";
    ui.keypairFields.hidden = !keypair;
    ui.passwordFields.hidden = keypair;
  }

  function showLoginError(text) {
    ui.loginError.textContent = text;
    ui.loginError.hidden = !text;
  }

  async function submitLogin(event) {
    event.preventDefault();
    const keypair = loginMethod() === "keypair";
    const [first, second] = keypair ? [ui.accessKey, ui.secretKey] : [ui.userId, ui.password];
    if (!first.value.trim() || !second.value) {
      showLoginError("Fill in both fields.");
      (first.value.trim() ? second : first).focus();
      return;
    }
    const body = keypair
      ? { access_key: first.value.trim(), secret_key: second.value }
      : { user_id: first.value.trim(), password: second.value };
    ui.loginSubmit.disabled = true;
    showLoginError("");
    try {
      const response = await fetch("/auth/login", {
        method: "POST",
        credentials: "include",
        headers: { "Content-Type": "application/json", Accept: "application/json" },
        body: JSON.stringify(body),
      });
      if (response.ok) {
        second.value = "";
        enterDashboard(await response.json());
      } else if (response.status === 401) {
        showLoginError("Sign-in failed: these credentials were not accepted.");
        second.select();
      } else {
        showLoginError(`Sign-in failed: ${await problemText(response)}`);
      }
    } catch {
      showLoginError("The gateway cannot be reached; try again in a moment.");
    } finally {
      ui.loginSubmit.disabled = false;
    }
  }

  function enterDashboard(identity) {
    const who = `${identity.user_id} · ${identity.role} of ${identity.domain} · ${identity.access_key}`;
    ui.whoText.textContent = who;
    ui.whoText.title = who;
    ui.loginInfo.hidden = true;
    showView("dashboard");
    resetData();
    state.accessKey = identity.access_key;
    const resumeAfter = restoreSnapshot();
    connect(resumeAfter, resumeAfter ? "resume" : "fresh");
  }

  function leaveDashboard(message) {
    closeSource();
    saveSnapshot(); // the same keypair signing in again resumes
    state.accessKey = "";
    clearNotices();
    showStreamError("");
    setConn("idle");
    showView("login");
    ui.loginInfo.textContent = message;
    ui.loginInfo.hidden = !message;
    (loginMethod() === "keypair" ? ui.accessKey : ui.userId).focus();
  }

  async function logout() {
    closeSource();
    try {
      await fetch("/auth/logout", {
        method: "POST",
        credentials: "include",
        headers: { "Content-Type": "application/json" },
        body: "{}",
      });
    } catch {
      // the cookie ends with its TTL anyway
    }
    state.accessKey = ""; // nothing of this view is kept past a sign-out
    forgetSnapshot();
    leaveDashboard("You have signed out.");
  }

  // -- filters ---------------------------------------------------------------------------------

  function readFilters() {
    const value = (input) => (input.value.trim() === "*" ? "" : input.value.trim());
    return { sessionId: value(ui.fSession), group: value(ui.fGroup), owner: value(ui.fOwner) };
  }

  function filtersKey(filters = state.filters) {
    return JSON.stringify([filters.sessionId, filters.group, filters.owner]);
  }

  // The stream's filters as query parameters (the page's URL carries them, and the type).
  function filterQuery() {
    const query = new URLSearchParams();
    if (state.filters.sessionId) query.set("sessionId", state.filters.sessionId);
    if (state.filters.group) query.set("group", state.filters.group);
    if (state.filters.owner) query.set("ownerAccessKey", state.filters.owner);
    return query;
  }

  function writePageUrl() {
    const query = filterQuery();
    if (state.type) query.set("type", state.type);
    const search = query.toString();
    history.replaceState(null, "", location.pathname + (search ? `?${search}` : ""));
  }

  // Server-side filters open a new stream; the type only changes what is shown.
  function applyFilters(event) {
    event.preventDefault();
    const filters = readFilters();
    const changed = filtersKey(filters) !== filtersKey();
    state.filters = filters;
    setType(ui.fType.value);
    if (changed || state.conn === "refused" || state.conn === "idle") {
      resetData();
      saveSnapshot();
      connect("", "fresh");
    }
  }

  function setType(type) {
    state.type = KERNEL_EVENTS.includes(type) ? type : "";
    ui.fType.value = state.type;
    writePageUrl();
    for (const item of ui.timeline.children) item.hidden = !shown(item.dataset.event);
    for (const entry of state.sessions.values()) entry.row.hidden = !shown(entry.row.dataset.state);
    renderCounters();
  }

  function shown(name) {
    return !state.type || name === state.type;
  }

  function streamUrl(resumeAfter) {
    const query = filterQuery();
    if (resumeAfter) query.set("lastEventId", resumeAfter);
    const search = query.toString();
    return STREAM_PATH + (search ? `?${search}` : "");
  }

  // -- the stream ------------------------------------------------------------------------------

  function closeSource() {
    state.generation += 1;
    clearTimeout(state.retryTimer);
    state.retryTimer = 0;
    if (state.source) state.source.close();
    state.source = null;
  }

  // A fresh EventSource does not send Last-Event-ID, so a resume passes it in the query.
  // mode: "fresh" (new filters), "again" (after a lost stream), "resume" (after a reload).
  function connect(resumeAfter, mode) {
    closeSource();
    showStreamError("");
    setConn(mode === "again" ? "reconnecting" : "connecting");
    const source = new EventSource(streamUrl(resumeAfter), { withCredentials: true });
    state.source = source;
    let opened = false;
    source.onopen = () => {
      if (state.source !== source) return;
      clearNotices("connection"); // whatever went wrong with the stream is over
      if (state.conn === "reconnecting") {
        addNotice("ok", `Reconnected; resumed after ${state.lastEventId || "the start"}.`, "resumed");
      } else if (mode === "resume" && !opened) {
        addNotice("ok", `Resumed where this tab left off, after ${resumeAfter}.`, "resumed");
      }
      opened = true;
      state.retryDelay = RETRY_MIN_MS;
      setConn("live");
    };
    source.onerror = () => {
      if (state.source !== source) return;
      if (source.readyState === EventSource.CLOSED) {
        recover(source); // counted as a reconnect only if it is one (not a refusal)
      } else {
        state.reconnects += 1;
        setConn("reconnecting"); // the browser retries by itself, sending Last-Event-ID
      }
    };
    for (const name of KERNEL_EVENTS) source.addEventListener(name, onKernelEvent);
    source.addEventListener("server_close", onServerClose);
    source.addEventListener("history_truncated", onHistoryTruncated);
  }

  // EventSource gives up for good on any answer but 200 (a 503 from a replica shutting
  // down, a 502 from the load balancer, a 401 once the session ended). Ask the stream URL
  // once with fetch to learn why, then sign in again, stop, or retry with backoff.
  async function recover(source) {
    source.close();
    state.source = null;
    if (state.conn === "live") setConn("reconnecting");
    const generation = state.generation;
    const verdict = await probe(streamUrl(state.lastEventId));
    if (generation !== state.generation) return; // filters changed or signed out meanwhile
    if (verdict.kind === "login") {
      leaveDashboard("Your session has ended; sign in again.");
      return;
    }
    if (verdict.kind === "refused") {
      // The filters are wrong, not the link: retrying would only be refused again.
      clearNotices("connection");
      setConn("refused");
      showStreamError(
        `The gateway refused these filters (HTTP ${verdict.status}): ${verdict.text}. ` +
          "Change them and apply again.",
      );
      return;
    }
    state.reconnects += 1;
    setConn("reconnecting");
    const delay = verdict.kind === "ok" ? 0 : state.retryDelay;
    state.retryDelay = Math.min(state.retryDelay * 2, RETRY_MAX_MS);
    state.retryTimer = setTimeout(() => connect(state.lastEventId, "again"), delay);
  }

  async function probe(url) {
    const controller = new AbortController();
    const timer = setTimeout(() => controller.abort(), 5000);
    try {
      const response = await fetch(url, {
        credentials: "include",
        signal: controller.signal,
        headers: { Accept: "text/event-stream" },
      });
      if (response.ok) return { kind: "ok" };
      if (response.status === 401) return { kind: "login" };
      if (response.status >= 400 && response.status < 500 && response.status !== 429) {
        return { kind: "refused", status: response.status, text: await problemText(response) };
      }
      return { kind: "retry" };
    } catch {
      return { kind: "retry" };
    } finally {
      clearTimeout(timer);
      controller.abort(); // a 200 is a live stream: drop it
    }
  }

  function onKernelEvent(event) {
    let data;
    try {
      data = JSON.parse(event.data);
    } catch {
      return;
    }
    if (event.lastEventId) state.lastEventId = event.lastEventId;
    state.pending.push({ name: event.type, id: event.lastEventId, data });
    if (!state.flushTimer) state.flushTimer = setTimeout(flush, FLUSH_MS);
  }

  function onServerClose(event) {
    let why = "closed";
    try {
      why = JSON.parse(event.data).reason || why;
    } catch {
      // keep the generic word
    }
    addNotice(
      "info",
      `The server closed the stream (${why}); reconnecting with the last event ID.`,
      "connection",
    );
  }

  function onHistoryTruncated(event) {
    let info = {};
    try {
      info = JSON.parse(event.data);
    } catch {
      // an empty notice is still a notice
    }
    addNotice(
      "warn",
      `Some events were missed: history no longer holds everything after ` +
        `${info.lastEventId || "the last event seen"}; it resumes at ` +
        `${info.firstAvailableId || "the oldest event kept"}.`,
      "gap",
    );
  }

  // -- rendering -------------------------------------------------------------------------------

  function resetData() {
    clearTimeout(state.flushTimer);
    state.flushTimer = 0;
    state.pending = [];
    state.sessions.clear();
    state.timelineLog = [];
    state.lastEventId = "";
    state.events = 0;
    state.reconnects = 0;
    ui.sessionsBody.replaceChildren();
    ui.timeline.replaceChildren();
    clearNotices();
    showStreamError("");
    renderCounters();
  }

  function renderCounters() {
    ui.count.textContent = String(state.events);
    ui.lastId.textContent = state.lastEventId || "–";
    ui.lastId.title = state.lastEventId;
    ui.reconnects.textContent = String(state.reconnects);
    ui.sessionsCount.textContent = String(state.sessions.size);
    const counts = new Map(KERNEL_EVENTS.map((name) => [name, 0]));
    let visible = 0;
    for (const entry of state.sessions.values()) {
      const name = entry.row.dataset.state;
      counts.set(name, (counts.get(name) || 0) + 1);
      if (shown(name)) visible += 1;
    }
    for (const [name, chip] of ui.chips) {
      chip.count.textContent = String(counts.get(name) || 0);
      chip.button.dataset.zero = String(!counts.get(name));
      chip.button.setAttribute("aria-pressed", String(state.type === name));
    }
    ui.sessionsEmpty.textContent = state.sessions.size
      ? `No session is ${shortName(state.type)} now.`
      : "No events yet: sessions appear here as their events arrive.";
    ui.sessionsEmpty.hidden = visible > 0;
  }

  function flush() {
    clearTimeout(state.flushTimer);
    state.flushTimer = 0;
    const batch = state.pending;
    state.pending = [];
    addTimeline(batch);
    for (const event of batch) updateSession(event);
    state.events += batch.length;
    renderCounters();
    if (!state.saveTimer) state.saveTimer = setTimeout(saveSnapshot, SAVE_MS);
  }

  function addTimeline(batch) {
    const items = document.createDocumentFragment();
    for (let i = batch.length - 1; i >= Math.max(0, batch.length - TIMELINE_CAP); i -= 1) {
      items.append(timelineItem(batch[i]));
    }
    ui.timeline.prepend(items);
    while (ui.timeline.childElementCount > TIMELINE_CAP) ui.timeline.lastElementChild.remove();
    state.timelineLog.push(...batch);
    if (state.timelineLog.length > TIMELINE_CAP) {
      state.timelineLog.splice(0, state.timelineLog.length - TIMELINE_CAP);
    }
  }

  // -- what a reload brings back ---------------------------------------------------------------

  function saveSnapshot() {
    clearTimeout(state.saveTimer);
    state.saveTimer = 0;
    if (!state.accessKey) return;
    if (state.pending.length) flush(); // the id kept must not run ahead of the rows kept
    const snapshot = {
      v: 1,
      accessKey: state.accessKey,
      filters: filtersKey(),
      lastEventId: state.lastEventId,
      events: state.events,
      timeline: state.timelineLog.slice(-STORE_TIMELINE),
      sessions: [...state.sessions.values()]
        .slice(-STORE_SESSIONS)
        .map((entry) => ({ ...entry.last, result: entry.result })),
    };
    try {
      sessionStorage.setItem(STORE_KEY, JSON.stringify(snapshot));
    } catch {
      forgetSnapshot(); // storage full or off: a reload starts empty, as before
    }
  }

  function forgetSnapshot() {
    try {
      sessionStorage.removeItem(STORE_KEY);
    } catch {
      // storage off: nothing was kept
    }
  }

  const validEvent = (event) =>
    event !== null && typeof event === "object" && KERNEL_EVENTS.includes(event.name) &&
    typeof event.id === "string" && event.data !== null && typeof event.data === "object";

  // Shows what this tab kept for this keypair and these filters; the id to resume after.
  function restoreSnapshot() {
    let snapshot = null;
    try {
      snapshot = JSON.parse(sessionStorage.getItem(STORE_KEY) || "null");
    } catch {
      return "";
    }
    if (
      !snapshot || snapshot.v !== 1 || snapshot.accessKey !== state.accessKey ||
      snapshot.filters !== filtersKey() || typeof snapshot.lastEventId !== "string" ||
      !snapshot.lastEventId || !Array.isArray(snapshot.timeline) ||
      !Array.isArray(snapshot.sessions)
    ) {
      return "";
    }
    for (const saved of snapshot.sessions.slice(-STORE_SESSIONS)) {
      if (validEvent(saved)) updateSession(saved, String(saved.result || ""));
    }
    addTimeline(snapshot.timeline.slice(-STORE_TIMELINE).filter(validEvent));
    state.events = Number(snapshot.events) || 0;
    state.lastEventId = snapshot.lastEventId;
    renderCounters();
    return state.lastEventId;
  }

  function stateBadge(name) {
    const badge = node("span", `state cut tone-${TONE[name] || "pending"}`, shortName(name));
    badge.title = name;
    return badge;
  }

  function timelineItem(event) {
    const { data } = event;
    const item = node("li", "tl-item");
    item.dataset.id = event.id || "";
    item.dataset.event = event.name;
    item.hidden = !shown(event.name);
    const main = node("span", "tl-main");
    main.append(
      cutNode("span", "mono tl-session", String(data.sessionId || "")),
      cutNode("span", "mono tl-owner", String(data.ownerAccessKey || "")),
    );
    if (data.reason) main.append(node("span", "tl-reason", String(data.reason)));
    if (data.result) {
      main.append(node("span", `tl-result result-${data.result}`, String(data.result)));
    }
    item.append(timeNode(eventDate(event.id)), stateBadge(event.name), main);
    return item;
  }

  // A table cell; its data-label heads it when narrow screens stack the table.
  function cell(label, className) {
    const td = node("td", className);
    td.dataset.label = label;
    return td;
  }

  // restoredResult: the result a reload brings back with the session's last event.
  function updateSession(event, restoredResult) {
    const { data } = event;
    const sessionId = String(data.sessionId || "");
    const owner = String(data.ownerAccessKey || "");
    const key = `${owner}\0${sessionId}`;
    let entry = state.sessions.get(key);
    if (!entry) {
      const row = node("tr");
      row.dataset.session = sessionId;
      row.dataset.owner = owner;
      const cells = {
        session: cell("Session ID", "c-session"),
        owner: cell("Owner key", "c-owner"),
        state: cell("State", "c-state"),
        reason: cell("Reason", "c-reason"),
        result: cell("Result", "c-result"),
        updated: cell("Last update", "c-updated"),
      };
      cells.session.append(cutNode("span", "mono", sessionId));
      cells.owner.append(cutNode("span", "mono", owner));
      row.append(...Object.values(cells));
      entry = { key, row, cells, result: "", last: null };
      state.sessions.set(key, entry);
    }
    // A result belongs to the lifecycle it ended; a new lifecycle starts without one.
    if (event.name === "kernel_enqueued") entry.result = "";
    if (data.result) entry.result = String(data.result);
    if (restoredResult !== undefined) entry.result = restoredResult;
    entry.last = { name: event.name, id: event.id, data };
    const { cells, row } = entry;
    row.dataset.state = event.name;
    row.hidden = !shown(event.name);
    cells.state.replaceChildren(stateBadge(event.name));
    cells.reason.replaceChildren(cutNode("span", "", String(data.reason || "")));
    cells.result.replaceChildren(
      entry.result ? cutNode("span", `result result-${entry.result}`, entry.result) : "",
    );
    cells.updated.replaceChildren(timeNode(eventDate(event.id)));
    ui.sessionsBody.prepend(row); // most recently updated first
    // Map order is insertion order: re-insert so the first key is the least recent.
    state.sessions.delete(key);
    state.sessions.set(key, entry);
    if (state.sessions.size > SESSION_CAP) {
      const [oldestKey, oldest] = state.sessions.entries().next().value;
      oldest.row.remove();
      state.sessions.delete(oldestKey);
    }
    return entry;
  }

  // -- start -----------------------------------------------------------------------------------

  async function init() {
    const ids = {
      loginView: "login-view", loginForm: "login-form", loginInfo: "login-info",
      loginError: "login-error", loginSubmit: "login-submit", keypairFields: "keypair-fields",
      passwordFields: "password-fields", accessKey: "access-key", secretKey: "secret-key",
      userId: "user-id", password: "password", dashboardView: "dashboard-view", who: "who",
      whoText: "who-text", logout: "logout", filterForm: "filter-form", fSession: "f-session",
      fGroup: "f-group", fOwner: "f-owner", fType: "f-type", streamError: "stream-error",
      stateCounts: "state-counts", connState: "conn-state", reconnects: "conn-reconnects",
      lastId: "conn-last-id", count: "conn-count", notices: "notices", timeline: "timeline",
      sessionsCount: "sessions-count", sessionsEmpty: "sessions-empty",
    };
    for (const [name, id] of Object.entries(ids)) ui[name] = byId(id);
    ui.sessionsBody = byId("sessions").tBodies[0];
    ui.chips = new Map();
    for (const name of KERNEL_EVENTS) {
      const option = node("option", "", shortName(name));
      option.value = name;
      ui.fType.append(option);
      const button = node("button", `chip tone-${TONE[name]}`);
      button.type = "button";
      button.dataset.state = name;
      button.title = `Show only sessions now ${shortName(name)}, and ${name} events`;
      const count = node("span", "chip-n", "0");
      button.append(node("span", "chip-name", shortName(name)), count);
      button.addEventListener("click", () => setType(state.type === name ? "" : name));
      const item = node("li");
      item.append(button);
      ui.stateCounts.append(item);
      ui.chips.set(name, { button, count });
    }

    ui.loginForm.addEventListener("submit", submitLogin);
    ui.loginForm.addEventListener("change", syncLoginMethod);
    ui.logout.addEventListener("click", logout);
    ui.filterForm.addEventListener("submit", applyFilters);
    ui.fType.addEventListener("change", () => setType(ui.fType.value));
    // a reload (or leaving) keeps what is shown, so the next page resumes after it
    window.addEventListener("pagehide", saveSnapshot);

    const query = new URLSearchParams(location.search);
    ui.fSession.value = query.get("sessionId") || "";
    ui.fGroup.value = query.get("group") || "";
    ui.fOwner.value = query.get("ownerAccessKey") || "";
    state.filters = readFilters();
    state.type = KERNEL_EVENTS.includes(query.get("type")) ? query.get("type") : "";
    ui.fType.value = state.type;
    syncLoginMethod();
    setConn("idle");

    try {
      const response = await fetch("/auth/me", { credentials: "include" });
      if (response.ok) {
        enterDashboard(await response.json());
        return;
      }
    } catch {
      // not signed in, or the gateway is away: the form says what happens next
    }
    leaveDashboard("");
  }

  init();
})();
