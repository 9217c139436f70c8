// The gateway's live dashboard: sign in (cookie session), pick filters, watch the stream.
// No framework and no build step; every value from the server goes in as text, never HTML.
"use strict";

(() => {
  const STREAM_PATH = "/stream/kernel/_/events";
  const TIMELINE_CAP = 500;
  const SESSION_CAP = 1000;
  const NOTICE_CAP = 6;
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
    reconnecting: "Reconnecting…", stopped: "Stopped",
  };

  const ui = {};
  const state = {
    source: null,
    generation: 0, // bumped whenever a stream is dropped on purpose; stale callbacks check it
    conn: "idle",
    filters: { sessionId: "", group: "" },
    lastEventId: "",
    reconnects: 0,
    events: 0,
    retryDelay: RETRY_MIN_MS,
    retryTimer: 0,
    pending: [],
    flushTimer: 0,
    sessions: new Map(), // owner key + "\0" + session id -> { row, cells, result }
  };

  // -- small helpers ---------------------------------------------------------------------------

  const byId = (id) => document.getElementById(id);

  function node(tag, className, text) {
    const el = document.createElement(tag);
    if (className) el.className = className;
    if (text !== undefined) el.textContent = text;
    return el;
  }

  // A Redis stream id starts with the milliseconds at which the event was stored.
  function eventDate(id) {
    const ms = Number.parseInt(String(id || "").split("-")[0], 10);
    return Number.isFinite(ms) && ms > 0 ? new Date(ms) : new Date();
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

  function addNotice(kind, text) {
    const item = node("li", `notice notice-${kind}`);
    item.append(timeNode(new Date()), node("span", "notice-text", text));
    const dismiss = node("button", "dismiss", "×");
    dismiss.type = "button";
    dismiss.setAttribute("aria-label", "Dismiss notice");
    dismiss.addEventListener("click", () => item.remove());
    item.append(dismiss);
    ui.notices.prepend(item);
    while (ui.notices.childElementCount > NOTICE_CAP) ui.notices.lastElementChild.remove();
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
    ui.whoText.textContent =
      `${identity.user_id} · ${identity.role} of ${identity.domain} · ${identity.access_key}`;
    ui.loginInfo.hidden = true;
    showView("dashboard");
    resetData();
    connect("");
  }

  function leaveDashboard(message) {
    closeSource();
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
    leaveDashboard("You have signed out.");
  }

  // -- filters ---------------------------------------------------------------------------------

  function readFilters() {
    const value = (input) => (input.value.trim() === "*" ? "" : input.value.trim());
    return { sessionId: value(ui.fSession), group: value(ui.fGroup) };
  }

  function applyFilters(event) {
    event.preventDefault();
    state.filters = readFilters();
    const query = new URLSearchParams();
    if (state.filters.sessionId) query.set("sessionId", state.filters.sessionId);
    if (state.filters.group) query.set("group", state.filters.group);
    const search = query.toString();
    history.replaceState(null, "", location.pathname + (search ? `?${search}` : ""));
    resetData();
    connect("");
  }

  function streamUrl(resumeAfter) {
    const query = new URLSearchParams();
    if (state.filters.sessionId) query.set("sessionId", state.filters.sessionId);
    if (state.filters.group) query.set("group", state.filters.group);
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
  function connect(resumeAfter, again = false) {
    closeSource();
    setConn(again ? "reconnecting" : "connecting");
    const source = new EventSource(streamUrl(resumeAfter), { withCredentials: true });
    state.source = source;
    source.onopen = () => {
      if (state.source !== source) return;
      if (state.conn === "reconnecting") {
        addNotice("ok", `Reconnected; resumed after ${state.lastEventId || "the start"}.`);
      }
      state.retryDelay = RETRY_MIN_MS;
      setConn("live");
    };
    source.onerror = () => {
      if (state.source !== source) return;
      state.reconnects += 1;
      if (source.readyState === EventSource.CLOSED) {
        recover(source);
      } else {
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
    setConn("reconnecting");
    const generation = state.generation;
    const verdict = await probe(streamUrl(state.lastEventId));
    if (generation !== state.generation) return; // filters changed or signed out meanwhile
    if (verdict.kind === "login") {
      leaveDashboard("Your session has ended; sign in again.");
      return;
    }
    if (verdict.kind === "refused") {
      setConn("stopped");
      addNotice("error", `The gateway refused the stream: ${verdict.text}`);
      return;
    }
    const delay = verdict.kind === "ok" ? 0 : state.retryDelay;
    state.retryDelay = Math.min(state.retryDelay * 2, RETRY_MAX_MS);
    state.retryTimer = setTimeout(() => connect(state.lastEventId, true), delay);
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
      if ([400, 403, 404].includes(response.status)) {
        return { kind: "refused", text: await problemText(response) };
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
    addNotice("info", `The server closed the stream (${why}); reconnecting with the last event ID.`);
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
    );
  }

  // -- rendering -------------------------------------------------------------------------------

  function resetData() {
    clearTimeout(state.flushTimer);
    state.flushTimer = 0;
    state.pending = [];
    state.sessions.clear();
    state.lastEventId = "";
    state.events = 0;
    ui.sessionsBody.replaceChildren();
    ui.timeline.replaceChildren();
    renderCounters();
  }

  function renderCounters() {
    ui.count.textContent = String(state.events);
    ui.lastId.textContent = state.lastEventId || "–";
    ui.sessionsCount.textContent = String(state.sessions.size);
    ui.sessionsEmpty.hidden = state.sessions.size > 0;
  }

  function flush() {
    state.flushTimer = 0;
    const batch = state.pending;
    state.pending = [];
    const items = document.createDocumentFragment();
    for (let i = batch.length - 1; i >= Math.max(0, batch.length - TIMELINE_CAP); i -= 1) {
      items.append(timelineItem(batch[i]));
    }
    ui.timeline.prepend(items);
    while (ui.timeline.childElementCount > TIMELINE_CAP) ui.timeline.lastElementChild.remove();
    for (const event of batch) updateSession(event);
    state.events += batch.length;
    renderCounters();
  }

  function stateBadge(name) {
    const badge = node("span", `state tone-${TONE[name] || "pending"}`, shortName(name));
    badge.title = name;
    return badge;
  }

  function timelineItem(event) {
    const { data } = event;
    const item = node("li", "tl-item");
    item.dataset.id = event.id || "";
    item.dataset.event = event.name;
    const main = node("span", "tl-main");
    main.append(
      node("span", "mono tl-session", data.sessionId || ""),
      node("span", "mono tl-owner", data.ownerAccessKey || ""),
    );
    if (data.reason) main.append(node("span", "tl-reason", data.reason));
    if (data.result) main.append(node("span", `tl-result result-${data.result}`, data.result));
    item.append(timeNode(eventDate(event.id)), stateBadge(event.name), main);
    return item;
  }

  function updateSession(event) {
    const { data } = event;
    const key = `${data.ownerAccessKey}\0${data.sessionId}`;
    let entry = state.sessions.get(key);
    if (!entry) {
      const row = node("tr");
      row.dataset.session = data.sessionId || "";
      row.dataset.owner = data.ownerAccessKey || "";
      const cells = {
        session: node("td", "mono", data.sessionId || ""),
        owner: node("td", "mono", data.ownerAccessKey || ""),
        state: node("td"),
        reason: node("td", "reason"),
        result: node("td"),
        updated: node("td"),
      };
      row.append(...Object.values(cells));
      entry = { key, row, cells, result: "" };
      state.sessions.set(key, entry);
    }
    // A result belongs to the lifecycle it ended; a new lifecycle starts without one.
    if (event.name === "kernel_enqueued") entry.result = "";
    if (data.result) entry.result = data.result;
    const { cells, row } = entry;
    row.dataset.state = event.name;
    cells.state.replaceChildren(stateBadge(event.name));
    cells.reason.textContent = data.reason || "";
    cells.result.replaceChildren(
      entry.result ? node("span", `result result-${entry.result}`, entry.result) : "",
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
  }

  // -- start -----------------------------------------------------------------------------------

  async function init() {
    const ids = {
      loginView: "login-view", loginForm: "login-form", loginInfo: "login-info",
      loginError: "login-error", loginSubmit: "login-submit", keypairFields: "keypair-fields",
      passwordFields: "password-fields", accessKey: "access-key", secretKey: "secret-key",
      userId: "user-id", password: "password", dashboardView: "dashboard-view", who: "who",
      whoText: "who-text", logout: "logout", filterForm: "filter-form", fSession: "f-session",
      fGroup: "f-group", connState: "conn-state", reconnects: "conn-reconnects",
      lastId: "conn-last-id", count: "conn-count", notices: "notices", timeline: "timeline",
      sessionsCount: "sessions-count", sessionsEmpty: "sessions-empty",
    };
    for (const [name, id] of Object.entries(ids)) ui[name] = byId(id);
    ui.sessionsBody = byId("sessions").tBodies[0];

    ui.loginForm.addEventListener("submit", submitLogin);
    ui.loginForm.addEventListener("change", syncLoginMethod);
    ui.logout.addEventListener("click", logout);
    ui.filterForm.addEventListener("submit", applyFilters);

    const query = new URLSearchParams(location.search);
    ui.fSession.value = query.get("sessionId") || "";
    ui.fGroup.value = query.get("group") || "";
    state.filters = readFilters();
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
