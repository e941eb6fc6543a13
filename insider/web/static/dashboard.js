// The operator's dashboard: polls the API, shows the sender and the latest messages, starts and stops sending.
// Plain browser JavaScript, no build step and nothing from elsewhere, so it works offline.
"use strict";

(() => {
  const REFRESH_MS = 3000;
  const LIST_LIMIT = 10;
  const TOKEN_KEY = "insider.apiToken";
  const $ = (id) => document.getElementById(id);

  class AuthRequired extends Error {}
  class ApiError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  let timer = null;
  let inFlight = false;
  let lastSender = null;
  let memoryToken = ""; // where the token lives when session storage is refused (private modes)

  function token() {
    try {
      return sessionStorage.getItem(TOKEN_KEY) || memoryToken;
    } catch {
      return memoryToken;
    }
  }

  function saveToken(value) {
    memoryToken = value;
    try {
      sessionStorage.setItem(TOKEN_KEY, value);
    } catch {
      // kept in memory only: it lasts until the page reloads
    }
  }

  function forgetToken() {
    memoryToken = "";
    try {
      sessionStorage.removeItem(TOKEN_KEY);
    } catch {
      // nothing stored
    }
  }

  // API paths are relative, so the page also works behind a reverse proxy under a prefix.
  async function api(path, method = "GET", payload = undefined) {
    const headers = { Accept: "application/json" };
    // Every GET here is the periodic refresh: the service logs those at debug, not info.
    if (method === "GET") headers["X-Insider-Refresh"] = "1";
    const bearer = token();
    if (bearer) headers.Authorization = `Bearer ${bearer}`;
    const init = { method, headers, cache: "no-store" };
    if (payload !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(payload);
    }
    const response = await fetch(path, init);
    if (response.status === 401) throw new AuthRequired();
    let body = null;
    try {
      body = await response.json();
    } catch {
      body = null;
    }
    if (!response.ok) {
      const error = new ApiError(response.status, (body && body.error) || response.statusText);
      error.fields = (body && body.fields) || {};
      throw error;
    }
    return body;
  }

  function showNotice(text, kind = "error") {
    const notice = $("notice");
    notice.textContent = text;
    notice.dataset.kind = kind;
    notice.hidden = !text;
  }

  function askForToken() {
    const form = $("auth");
    const wasHidden = form.hidden;
    form.hidden = false;
    showNotice(token() ? "That token was refused; enter the right one." : "", "error");
    if (wasHidden) $("token").focus();
    const state = $("sender-state");
    state.dataset.running = "unknown";
    state.textContent = "Needs token";
    $("start").disabled = true;
    $("stop").disabled = true;
  }

  function describeDuration(seconds) {
    const s = Math.max(0, Math.round(seconds));
    if (s < 60) return `${s} s`;
    const m = Math.floor(s / 60);
    if (m < 60) return s % 60 ? `${m} min ${s % 60} s` : `${m} min`;
    const h = Math.floor(m / 60);
    return m % 60 ? `${h} h ${m % 60} min` : `${h} h`;
  }

  const clockTime = (at) => at.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });

  function describeTime(iso) {
    if (!iso) return "–";
    const at = new Date(iso);
    const ahead = (at.getTime() - Date.now()) / 1000;
    const clock = clockTime(at);
    if (Math.abs(ahead) < 1) return `${clock} (now)`;
    return ahead > 0 ? `${clock} (in ${describeDuration(ahead)})` : `${clock} (${describeDuration(-ahead)} ago)`;
  }

  function shortDate(iso) {
    if (!iso) return "";
    const at = new Date(iso);
    const today = new Date().toDateString() === at.toDateString();
    return today ? clockTime(at) : at.toLocaleString([], { dateStyle: "short", timeStyle: "medium" });
  }

  function renderSender(sender) {
    lastSender = sender;
    const state = $("sender-state");
    state.dataset.running = String(sender.running);
    state.textContent = sender.running ? "Sending" : "Stopped";
    $("start").disabled = sender.running;
    $("stop").disabled = !sender.running;
    renderSchedule();
    $("batch-size").textContent = `${sender.batchSize} message${sender.batchSize === 1 ? "" : "s"}`;
    $("interval").textContent = sender.intervalSeconds > 0 ? describeDuration(sender.intervalSeconds) : "back to back";
  }

  // Relative times move every second between polls, without asking the server.
  function renderSchedule() {
    if (!lastSender) return;
    $("next-tick").textContent = lastSender.running ? describeTime(lastSender.nextTickAt) : "stopped";
    $("last-tick").textContent = describeTime(lastSender.lastTickAt);
  }

  function renderCounts(counts, deliveryRate, waiting) {
    const statuses = ["pending", "sending", "sent", "failed", "expired", "cancelled", "delivered", "undelivered"];
    for (const status of [...statuses, "suppressed"]) {
      $(`count-${status}`).textContent = counts ? String(counts[status] ?? 0) : "–";
    }
    // Of the pending ones, those held back by consent: the recipient's sending hours, the frequency cap.
    for (const reason of ["sending-hours", "cap"]) {
      $(`waiting-${reason}`).textContent = counts && waiting ? String(waiting[reason] ?? 0) : "–";
    }
    // Of the messages with a final receipt, the share delivered.
    $("delivery-rate").textContent =
      deliveryRate === null || deliveryRate === undefined ? "–" : `${(deliveryRate * 100).toFixed(1)}%`;
  }

  function renderList(listId, emptyId, messages, meta) {
    const list = $(listId);
    const template = $("message-item");
    const items = messages.map((m) => {
      const item = template.content.firstElementChild.cloneNode(true);
      item.dataset.id = String(m.id);
      item.querySelector(".to").textContent = `#${m.id} → ${m.recipientPhone}`;
      item.querySelector(".when").textContent = shortDate(m.sentAt || m.createdAt);
      item.dataset.status = m.status;
      item.querySelector(".status").textContent = m.status;
      item.querySelector(".content").textContent = m.content;
      item.querySelector(".meta").textContent = meta(m);
      return item;
    });
    list.replaceChildren(...items);
    $(emptyId).hidden = messages.length > 0;
  }

  const sentMeta = (m) => {
    const via = m.provider ? `via ${m.provider}${m.cost === null ? "" : ` (cost ${m.cost})`} · ` : "";
    const id = `${via}${m.messageId ? `provider id ${m.messageId}` : "no provider id"}`;
    if (m.status === "sent") return `${id} · awaiting receipt`;
    const when = m.deliveredAt ? ` ${shortDate(m.deliveredAt)}` : "";
    const error = m.deliveryError ? ` (error ${m.deliveryError})` : "";
    return `${id} · ${m.deliveryStatus || m.status}${when}${error}`;
  };
  const failedMeta = (m) =>
    `${m.attempts} attempt${m.attempts === 1 ? "" : "s"}${m.lastError ? ` · ${m.lastError}` : ""}`;

  function renderProviders(providers) {
    const template = $("provider-item");
    const rows = providers.map((p) => {
      const row = template.content.firstElementChild.cloneNode(true);
      row.dataset.name = p.name;
      row.dataset.enabled = String(p.enabled);
      row.dataset.breaker = p.breaker;
      row.querySelector(".name").textContent = `${p.name} (${p.kind})`;
      let state = p.enabled ? "enabled" : "disabled";
      if (p.enabled && p.throttledUntil) state = `throttled until ${clockTime(new Date(p.throttledUntil))}`;
      row.querySelector(".enabled").textContent = state;
      row.querySelector(".breaker").textContent = p.breaker;
      row.querySelector(".rate").textContent = p.rate === null ? "–" : `${p.rate}/s`;
      row.querySelector(".sent").textContent = String(p.sent);
      row.querySelector(".failed").textContent = String(p.failed);
      row.querySelector(".cost").textContent = p.price === null ? "–" : String(p.cost);
      const last = p.recentErrors[0];
      row.querySelector(".error").textContent = last ? `${shortDate(last.at)} ${last.error}` : "";
      const button = row.querySelector(".switch");
      button.textContent = p.enabled ? "Disable" : "Enable";
      button.addEventListener("click", () => switchProvider(p.name, p.enabled ? "disable" : "enable", button));
      return row;
    });
    $("providers-list").replaceChildren(...rows);
  }

  async function switchProvider(name, action, button) {
    button.disabled = true;
    try {
      await api(`api/v1/providers/${encodeURIComponent(name)}/${action}`, "POST");
      showNotice("");
    } catch (error) {
      if (error instanceof AuthRequired) {
        askForToken();
        return;
      }
      showNotice(error instanceof ApiError ? error.message : "The service cannot be reached.");
    }
    schedule(0);
  }

  // The suppression list: its latest entries, each with a button that takes the number off it.
  function renderSuppressions(entries) {
    const template = $("suppression-item");
    const rows = entries.map((s) => {
      const row = template.content.firstElementChild.cloneNode(true);
      row.dataset.to = s.to;
      row.dataset.scope = s.scope;
      row.querySelector(".to").textContent = s.to;
      row.querySelector(".scope").textContent = s.scope;
      row.querySelector(".reason").textContent = s.reason;
      row.querySelector(".source").textContent = s.source;
      row.querySelector(".since").textContent = shortDate(s.createdAt);
      const button = row.querySelector(".remove");
      button.addEventListener("click", () => unsuppress(s.to, button));
      return row;
    });
    $("suppressions-list").replaceChildren(...rows);
    $("suppressions-empty").hidden = entries.length > 0;
  }

  function describeProblem(error) {
    if (!(error instanceof ApiError)) return "The service cannot be reached.";
    const details = Object.entries(error.fields || {}).map(([field, problems]) => `${field}: ${problems.join(", ")}`);
    return details.length ? details.join("; ") : error.message;
  }

  async function suppress(event) {
    event.preventDefault();
    const result = $("suppress-result");
    const body = { to: $("suppress-to").value.trim(), scope: $("suppress-scope").value };
    const reason = $("suppress-reason").value.trim();
    if (reason) body.reason = reason;
    $("suppress-submit").disabled = true;
    try {
      const entry = await api("api/v1/suppressions", "POST", body);
      result.dataset.kind = "ok";
      result.textContent = `${entry.to} is suppressed (${entry.scope}: ${entry.reason}).`;
      $("suppress-to").value = "";
      $("suppress-reason").value = "";
      schedule(0);
    } catch (error) {
      if (error instanceof AuthRequired) {
        askForToken();
        return;
      }
      result.dataset.kind = "error";
      result.textContent = describeProblem(error);
    } finally {
      $("suppress-submit").disabled = false;
    }
  }

  async function unsuppress(to, button) {
    button.disabled = true;
    const result = $("suppress-result");
    try {
      await api(`api/v1/suppressions/${encodeURIComponent(to)}`, "DELETE");
      result.dataset.kind = "ok";
      result.textContent = `${to} is off the list.`;
    } catch (error) {
      if (error instanceof AuthRequired) {
        askForToken();
        return;
      }
      result.dataset.kind = "error";
      result.textContent = describeProblem(error);
    }
    schedule(0);
  }

  async function refresh() {
    if (inFlight) return;
    inFlight = true;
    let again = true;
    try {
      const [stats, sent, failed, providers, suppressions] = await Promise.allSettled([
        api("api/v1/stats"),
        api(`api/v1/messages?limit=${LIST_LIMIT}`), // sent, delivered and undelivered
        api(`api/v1/messages?status=failed&limit=${LIST_LIMIT}`),
        api("api/v1/providers"),
        api(`api/v1/suppressions?limit=${LIST_LIMIT}`),
      ]);
      const results = [stats, sent, failed, providers, suppressions];
      if (results.some((r) => r.status === "rejected" && r.reason instanceof AuthRequired)) {
        askForToken();
        again = false; // polling waits for a token
        return;
      }
      $("auth").hidden = true;
      $("forget").hidden = !token();
      if (stats.status === "fulfilled") {
        renderCounts(stats.value.counts, stats.value.deliveryRate, stats.value.waiting);
        $("segments-sent").textContent = String(stats.value.segmentsSent ?? "–");
        renderSender(stats.value.sender);
      } else {
        renderCounts(null, null, null);
        try {
          renderSender(await api("api/v1/sender")); // the sender's state needs no database
        } catch {
          // shown by the notice below
        }
      }
      if (sent.status === "fulfilled") renderList("sent-list", "sent-empty", sent.value.data, sentMeta);
      if (failed.status === "fulfilled") renderList("failed-list", "failed-empty", failed.value.data, failedMeta);
      if (providers.status === "fulfilled") renderProviders(providers.value.data);
      if (suppressions.status === "fulfilled") renderSuppressions(suppressions.value.data);
      const problem = results.find((r) => r.status === "rejected");
      if (problem) {
        const reason = problem.reason;
        showNotice(reason instanceof ApiError ? reason.message : "The service cannot be reached.");
      } else {
        showNotice("");
      }
      const now = new Date();
      $("updated").textContent = clockTime(now);
      $("updated").dateTime = now.toISOString();
    } finally {
      inFlight = false;
      if (again) schedule();
    }
  }

  function schedule(delay = REFRESH_MS) {
    clearTimeout(timer);
    timer = setTimeout(refresh, delay);
  }

  // The form: characters, encoding and segments come from the service (POST .../preview),
  // the same code that counts them for the API, asked at most every 250 ms while typing.
  const PREVIEW_DELAY_MS = 250;
  let previewTimer = null;
  let previewSeq = 0;

  function describeMeasure(m) {
    const parts = [
      `${m.characters} character${m.characters === 1 ? "" : "s"}`,
      m.encoding,
      `${m.segments} segment${m.segments === 1 ? "" : "s"}`,
    ];
    return m.error ? `${parts.join(" · ")} — ${m.error}` : parts.join(" · ");
  }

  function describeRoute(route) {
    if (!route) return "";
    const via = route.provider ? `via ${route.provider}` : "no provider can take it now";
    const cost = route.cost === null ? "" : ` · cost ${route.cost}`;
    return `Route ${route.name} (${route.strategy}: ${route.providers.join(" → ")}) · ${via}${cost}`;
  }

  async function preview() {
    const seq = ++previewSeq;
    const content = $("compose-content").value;
    const to = $("compose-to").value.trim();
    const priority = Number.parseInt($("compose-priority").value || "5", 10);
    const body = { content };
    if (to) body.to = to;
    if (priority >= 0 && priority <= 9) body.priority = priority;
    try {
      const measured = await api("api/v1/messages/preview", "POST", body);
      if (seq !== previewSeq) return; // an answer to older text
      const line = $("compose-measure");
      line.textContent = describeMeasure(measured);
      line.dataset.encoding = measured.encoding;
      line.dataset.segments = String(measured.segments);
      line.dataset.invalid = measured.error ? "true" : "false";
      $("compose-route").textContent = describeRoute(measured.route);
    } catch (error) {
      if (error instanceof AuthRequired) askForToken();
    }
  }

  function previewSoon() {
    clearTimeout(previewTimer);
    previewTimer = setTimeout(preview, PREVIEW_DELAY_MS);
  }

  function localToIso(value) {
    // datetime-local has no zone: it is the browser's local time, sent with its offset (as UTC).
    return value ? new Date(value).toISOString() : undefined;
  }

  async function queue(event) {
    event.preventDefault();
    const result = $("compose-result");
    const body = {
      to: $("compose-to").value.trim(),
      content: $("compose-content").value,
      priority: Number.parseInt($("compose-priority").value || "5", 10),
    };
    const sendAt = localToIso($("compose-send-at").value);
    const validUntil = localToIso($("compose-valid-until").value);
    if (sendAt) body.sendAt = sendAt;
    if (validUntil) body.validUntil = validUntil;
    $("compose-submit").disabled = true;
    try {
      const message = await api("api/v1/messages", "POST", body);
      result.dataset.kind = "ok";
      result.textContent = `Queued message ${message.id} to ${message.recipientPhone} (${message.encoding}, ${message.segments} segment${message.segments === 1 ? "" : "s"}).`;
      $("compose-content").value = "";
      previewSoon();
      schedule(0);
    } catch (error) {
      if (error instanceof AuthRequired) {
        askForToken();
        return;
      }
      result.dataset.kind = "error";
      if (error instanceof ApiError) {
        const details = Object.entries(error.fields || {}).map(([field, problems]) => `${field}: ${problems.join(", ")}`);
        result.textContent = details.length ? details.join("; ") : error.message;
      } else {
        result.textContent = "The service cannot be reached.";
      }
    } finally {
      $("compose-submit").disabled = false;
    }
  }

  async function command(path) {
    $("start").disabled = true;
    $("stop").disabled = true;
    try {
      renderSender({ ...(lastSender || {}), ...(await api(path, "POST")) });
    } catch (error) {
      if (error instanceof AuthRequired) {
        askForToken();
        return;
      }
      showNotice(error instanceof ApiError ? error.message : "The service cannot be reached.");
    }
    schedule(0);
  }

  document.addEventListener("DOMContentLoaded", () => {
    $("start").addEventListener("click", () => command("api/v1/messages/start"));
    $("compose-content").addEventListener("input", previewSoon);
    $("compose-to").addEventListener("input", previewSoon);
    $("compose").addEventListener("submit", queue);
    $("suppress").addEventListener("submit", suppress);
    $("stop").addEventListener("click", () => command("api/v1/messages/stop"));
    $("auth").addEventListener("submit", (event) => {
      event.preventDefault();
      const value = $("token").value.trim();
      if (!value) return;
      saveToken(value);
      $("token").value = "";
      schedule(0);
    });
    $("forget").addEventListener("click", () => {
      forgetToken();
      $("forget").hidden = true;
      schedule(0);
    });
    document.addEventListener("visibilitychange", () => {
      if (!document.hidden) schedule(0);
    });
    setInterval(renderSchedule, 1000);
    refresh();
  });
})();
