// The kiosk screen for village doctors and vehicle crews: sign in, check a resident in, take
// the measurements live, see the sync state. Plain JavaScript, nothing from the network: the
// kiosk works with its 4G link down. All texts come from i18n/<lang>.json (zh-CN by default);
// the language chosen is remembered in this browser.
//
// Views are the <section data-view> elements; VIEWS says what each does when shown. A new task
// (the chronic-disease questionnaire, the vehicle's outreach queue) is one section and one entry.
"use strict";

const LANGS = ["zh-CN", "en"];
const LANG_KEY = "kiosk.lang";
const STATUS_POLL_MS = 2000;
const ACTIVITY_PING_MS = 60000;
const ECG_MM_PER_S = 25;
const ECG_MM_PER_MV = 10;
const ECG_STRIP_S = 10;

const state = {
  lang: "zh-CN",
  strings: {},
  operator: null,
  checkin: null,
  events: null,
  statusTimer: null,
  lastStatus: null,
  live: new Map(), // seq -> reading shown in this visit
  lastActivityPing: 0,
  view: null,
};

const $ = (selector, root = document) => root.querySelector(selector);

// ---- texts ------------------------------------------------------------------------------
function t(key, params = {}) {
  const template = state.strings[key];
  if (template === undefined) return key;
  return template.replace(/\{(\w+)\}/g, (_, name) => (name in params ? String(params[name]) : `{${name}}`));
}

async function loadLanguage(lang) {
  if (!LANGS.includes(lang)) lang = "zh-CN";
  const response = await fetch(`/ui/i18n/${lang}.json`, { cache: "no-store" });
  state.strings = await response.json();
  state.lang = lang;
  document.documentElement.lang = lang;
  $("#lang").value = lang;
  for (const element of document.querySelectorAll("[data-i18n]")) {
    element.textContent = t(element.dataset.i18n);
  }
  document.title = t("app.title");
  rerender();
}

function rerender() {
  if (state.lastStatus) renderStatus(state.lastStatus);
  renderWho();
  renderCheckin();
  for (const element of document.querySelectorAll("#live .reading")) {
    const reading = state.live.get(Number(element.dataset.seq));
    if (reading) fillReading(element, reading);
  }
  if (state.view === "check") loadHistory();
}

function alertText(alert, field) {
  return alert[field] ? alert[field][state.lang] || alert[field].en : null;
}

// ---- messages -----------------------------------------------------------------------------
function showMessage(text, kind = "error") {
  const box = $("#message");
  box.textContent = text;
  box.className = kind;
  box.hidden = false;
}

function clearMessage() {
  $("#message").hidden = true;
}

function errorText(error) {
  if (!error || !error.code) return t("error.network");
  const facts = { ...error.facts };
  if (error.code === "locked") facts.minutes = Math.max(1, Math.ceil((facts.retry_after_s || 60) / 60));
  const key = `error.${error.code}`;
  if (key in state.strings) return t(key, facts);
  return t("error.generic", { message: error.message || error.code });
}

// ---- the gateway's API ------------------------------------------------------------------------
class ApiError extends Error {
  constructor(status, body) {
    super(body && body.message ? body.message : `HTTP ${status}`);
    this.status = status;
    this.code = body && body.error;
    this.facts = body || {};
  }
}

async function api(method, path, body) {
  let response;
  try {
    response = await fetch(path, {
      method,
      credentials: "same-origin",
      headers: body ? { "Content-Type": "application/json" } : {},
      body: body ? JSON.stringify(body) : undefined,
      cache: "no-store",
    });
  } catch (err) {
    throw new ApiError(0, { error: "network" });
  }
  let data = null;
  try {
    data = await response.json();
  } catch (err) {
    data = null;
  }
  if (!response.ok) {
    const error = new ApiError(response.status, data);
    if (response.status === 401 && state.operator && path !== "/api/session") sessionEnded(error);
    throw error;
  }
  return data;
}

async function attempt(job) {
  try {
    clearMessage();
    return await job();
  } catch (error) {
    if (!(error instanceof ApiError) || error.status !== 401 || !state.operator) showMessage(errorText(error));
    return undefined;
  }
}

// ---- views --------------------------------------------------------------------------------
const VIEWS = {
  signin: () => $("#signin-operator").focus(),
  checkin: () => {
    $("#search-results").replaceChildren();
    $("#checkin-value").focus();
  },
  check: () => loadHistory(),
};

function show(view) {
  state.view = view;
  for (const section of document.querySelectorAll("section[data-view]")) {
    section.hidden = section.dataset.view !== view;
  }
  VIEWS[view]();
}

// ---- sync bar and devices -------------------------------------------------------------------
function formatTime(ms) {
  if (!ms) return "–";
  return new Date(ms).toLocaleString(state.lang, { hour12: false });
}

function ago(ms) {
  const seconds = Math.max(0, Math.round((Date.now() - ms) / 1000));
  if (seconds < 60) return t("time.seconds_ago", { n: seconds });
  if (seconds < 3600) return t("time.minutes_ago", { n: Math.floor(seconds / 60) });
  return t("time.hours_ago", { n: Math.floor(seconds / 3600) });
}

function renderStatus(status) {
  state.lastStatus = status;
  const link = $("#link-state");
  if (!status) {
    link.dataset.state = "unknown";
    link.textContent = t("sync.unknown");
    return;
  }
  link.dataset.state = status.link_up ? "online" : "offline";
  link.textContent = status.link_up ? t("sync.online") : t("sync.offline");
  $("#waiting").textContent = String(status.waiting ?? "–");
  const lastSynced = status.outbox && status.outbox.last_synced_at_ms;
  $("#last-synced").textContent = lastSynced ? ago(lastSynced) : t("sync.never");
  $("#last-synced").title = lastSynced ? formatTime(lastSynced) : "";
  const storage = status.storage || {};
  const storageEl = $("#storage");
  storageEl.dataset.state = storage.state || "unguarded";
  storageEl.textContent =
    storage.state && storage.state !== "unguarded"
      ? t(`storage.${storage.state}`, { free: Math.round(storage.free_mb ?? 0) })
      : t("storage.unguarded");
  if (status.waiting === 0) {
    // Nothing waits: every reading on the screen is in the health record now.
    for (const element of document.querySelectorAll("#live .reading")) {
      const reading = state.live.get(Number(element.dataset.seq));
      if (reading && reading.state !== "synced") {
        reading.state = "synced";
        fillReading(element, reading);
      }
    }
  }
  renderDevices(status.peripherals || []);
}

function deviceKinds(peripheral) {
  const kinds = (peripheral.capabilities || []).filter((name) => `kind.${name}` in state.strings);
  return kinds;
}

function renderDevices(peripherals) {
  const list = $("#devices");
  list.replaceChildren();
  if (!peripherals.length) {
    const item = document.createElement("li");
    item.textContent = t("device.none");
    list.append(item);
  }
  for (const peripheral of peripherals) {
    const connected = peripheral.transport === "ble" ? !!peripheral.connected : !!peripheral.device;
    const item = document.createElement("li");
    item.dataset.state = connected ? "connected" : "disconnected";
    const kinds = deviceKinds(peripheral).map((kind) => t(`kind.${kind}`));
    const device = peripheral.device;
    const name = device ? `${device.model} ${device.id}` : t("device.unnamed", { port: peripheral.port || peripheral.address || "?" });
    const label = document.createElement("span");
    label.textContent = `${kinds.length ? kinds.join("/") + " · " : ""}${name}: `;
    const stateEl = document.createElement("span");
    stateEl.className = "state";
    stateEl.textContent = connected ? t("device.connected") : t("device.disconnected");
    item.append(label, stateEl);
    if (peripheral.battery_percent !== null && peripheral.battery_percent !== undefined) {
      item.append(` · ${t("device.battery", { percent: peripheral.battery_percent })}`);
    }
    const error = peripheral.last_device_error || peripheral.last_error;
    if (error) {
      const code = String(error).split(": ").pop();
      const errorEl = document.createElement("span");
      errorEl.className = "error";
      errorEl.textContent = `device_error.${code}` in state.strings ? t(`device_error.${code}`) : String(error);
      item.append(errorEl);
    }
    list.append(item);
  }
  renderSteps(peripherals);
}

function renderSteps(peripherals) {
  const kinds = [];
  for (const peripheral of peripherals) {
    for (const kind of deviceKinds(peripheral)) if (!kinds.includes(kind)) kinds.push(kind);
  }
  for (const reading of state.live.values()) if (!kinds.includes(reading.kind)) kinds.push(reading.kind);
  const done = new Set([...state.live.values()].map((reading) => reading.kind));
  const list = $("#steps");
  list.replaceChildren();
  for (const kind of kinds) {
    const item = document.createElement("li");
    item.dataset.kind = kind;
    item.dataset.done = String(done.has(kind));
    item.textContent = `${t(`kind.${kind}`)}: ${done.has(kind) ? t("check.step.done") : t("check.step.waiting")}`;
    list.append(item);
  }
}

async function pollStatus() {
  try {
    const response = await fetch("/api/status", { cache: "no-store" });
    renderStatus(response.ok ? await response.json() : null);
  } catch (err) {
    renderStatus(null);
  }
}

function startStatusPolling() {
  if (state.statusTimer) return;
  pollStatus();
  state.statusTimer = setInterval(pollStatus, STATUS_POLL_MS);
}

function stopStatusPolling() {
  clearInterval(state.statusTimer);
  state.statusTimer = null;
}

// ---- sign-in and session ------------------------------------------------------------------
function renderWho() {
  const who = $("#who");
  const signOut = $("#sign-out");
  if (!state.operator) {
    who.textContent = "";
    signOut.hidden = true;
    return;
  }
  who.textContent = t("signin.signed_in_as", { name: state.operator.name, role: t(`role.${state.operator.role}`) });
  signOut.hidden = false;
}

async function signedIn(operator) {
  state.operator = operator;
  renderWho();
  openEvents();
  const current = await attempt(() => api("GET", "/api/checkin"));
  setCheckin(current ? current.checked_in : null);
}

function signedOut() {
  state.operator = null;
  state.checkin = null;
  state.live.clear();
  // Nothing of a resident stays on the page, not even hidden.
  for (const selector of ["#live", "#refused", "#history tbody", "#search-results", "#resident"]) {
    $(selector).replaceChildren();
  }
  closeEvents();
  renderWho();
  $("#signin-pin").value = "";
  show("signin");
}

function sessionEnded(error) {
  signedOut();
  showMessage(errorText(error));
}

function activity() {
  if (!state.operator) return;
  const now = Date.now();
  if (now - state.lastActivityPing < ACTIVITY_PING_MS) return;
  state.lastActivityPing = now;
  api("GET", "/api/session").catch(() => {}); // a 401 here shows the sign-in screen
}

// ---- live events ----------------------------------------------------------------------------
function openEvents() {
  closeEvents();
  const events = new EventSource("/api/events");
  state.events = events;
  events.addEventListener("open", () => stopStatusPolling());
  events.addEventListener("status", (event) => renderStatus(JSON.parse(event.data)));
  events.addEventListener("checkin", (event) => {
    const checkin = JSON.parse(event.data).checked_in;
    if ((checkin && checkin.id) !== (state.checkin && state.checkin.id)) setCheckin(checkin);
  });
  events.addEventListener("reading", (event) => addLiveReading(JSON.parse(event.data)));
  events.addEventListener("refused", (event) => showRefused(JSON.parse(event.data)));
  events.addEventListener("session", (event) => {
    const data = JSON.parse(event.data);
    sessionEnded({ code: data.error, message: data.message, facts: {} });
  });
  events.addEventListener("error", () => {
    startStatusPolling(); // the bar keeps its state while the stream reconnects
    if (events.readyState === EventSource.CLOSED && state.operator) {
      api("GET", "/api/session").then(() => state.operator && openEvents(), () => {});
    }
  });
}

function closeEvents() {
  if (state.events) state.events.close();
  state.events = null;
  startStatusPolling();
}

// ---- check-in ---------------------------------------------------------------------------------
function systemName(system) {
  return t(`resident.system.${system}`);
}

function setCheckin(checkin) {
  const changed = (checkin && checkin.id) !== (state.checkin && state.checkin.id);
  state.checkin = checkin;
  if (changed) {
    state.live.clear();
    $("#live").replaceChildren();
    $("#refused").replaceChildren();
  }
  renderCheckin();
  if (!state.operator) return;
  show(checkin ? "check" : "checkin");
}

function renderCheckin() {
  const checkin = state.checkin;
  $("#resident").textContent = checkin
    ? t("check.resident", { resident: checkin.resident, system: systemName(checkin.system), since: formatTime(checkin.started_ms) })
    : "";
}

async function checkIn(body) {
  const answer = await attempt(() => api("POST", "/api/checkin", body));
  if (!answer) return;
  $("#checkin-form").reset();
  $("#qr-form").reset();
  $("#search-form").reset();
  $("#first-visit").hidden = answer.seen_before;
  setCheckin(answer.checked_in);
}

// ---- readings ---------------------------------------------------------------------------------
function valueText(reading) {
  const values = Object.fromEntries(reading.values.map((m) => [m.name, m]));
  const number = (m) => (m && m.value !== null ? m.value : "–");
  if (reading.kind === "bp" && values.systolic) {
    let text = `${number(values.systolic)}/${number(values.diastolic)} ${values.systolic.display_unit}`;
    if (values.pulse_rate) text += ` · ${t("field.pulse_rate")} ${number(values.pulse_rate)} ${values.pulse_rate.display_unit}`;
    return text;
  }
  if (reading.kind === "ecg") return t("kind.ecg");
  return reading.values.map((m) => `${t(`field.${m.name}`)} ${number(m)} ${m.display_unit}`).join(" · ");
}

function flagText(flag) {
  if (flag.startsWith("implausible:")) return t("flag.implausible", { field: t(`field.${flag.slice(12)}`) });
  return `flag.${flag}` in state.strings ? t(`flag.${flag}`) : flag;
}

function alertElement(alert) {
  const box = document.createElement("div");
  box.className = "alert";
  box.dataset.severity = alert.severity;
  box.dataset.rule = alert.rule;
  const text = document.createElement("div");
  text.className = "text";
  text.textContent = `${t(`severity.${alert.severity}`)}: ${alertText(alert, "message") || t("alert.unknown", { rule: alert.rule })}`;
  box.append(text);
  const referral = alertText(alert, "referral");
  if (referral) {
    const referralEl = document.createElement("div");
    referralEl.className = "referral";
    referralEl.textContent = t("check.referral") + referral;
    box.append(referralEl);
  }
  return box;
}

function fillReading(element, reading) {
  $(".kind", element).textContent = t(`kind.${reading.kind}`);
  $("time", element).textContent = formatTime(reading.measured_at_ms);
  $(".device", element).textContent = `${reading.device.model} · ${reading.state === "synced" ? t("check.synced") : t("check.not_synced")}`;
  $(".values", element).textContent = valueText(reading);
  const flags = $(".flags", element);
  flags.replaceChildren(
    ...reading.flags.map((flag) => {
      const item = document.createElement("li");
      item.textContent = flagText(flag);
      return item;
    }),
  );
  $(".alerts", element).replaceChildren(...reading.alerts.map(alertElement));
  if (reading.waveform) {
    const ecg = $(".ecg", element);
    ecg.hidden = false;
    if (reading.strip) $(".ecg-title", element).textContent = t("check.ecg", { seconds: Math.round(reading.strip.duration_s * 10) / 10 });
  }
}

function addLiveReading(reading) {
  if (!state.checkin || !reading.current || state.live.has(reading.seq)) return;
  state.live.set(reading.seq, reading);
  const element = $("#reading-template").content.firstElementChild.cloneNode(true);
  element.dataset.seq = String(reading.seq);
  element.dataset.kind = reading.kind;
  fillReading(element, reading);
  $("#live").prepend(element);
  $("#live-empty").hidden = true;
  if (reading.waveform) drawWaveform(reading, element);
  if (state.lastStatus) renderSteps(state.lastStatus.peripherals || []);
}

function showRefused(refusal) {
  if (!state.checkin) return;
  const box = document.createElement("div");
  box.className = "refused";
  box.textContent =
    refusal.code === "implausible"
      ? t("check.refused_implausible", {
          kind: t(`kind.${refusal.kind}`), field: t(`field.${refusal.field}`), value: refusal.value,
          unit: refusal.unit, low: refusal.low, high: refusal.high,
        })
      : t("check.refused", { reason: refusal.reason });
  $("#refused").prepend(box);
}

async function loadHistory() {
  if (!state.checkin) return;
  const answer = await attempt(() => api("GET", "/api/resident/readings"));
  if (!answer) return;
  const body = $("#history tbody");
  body.replaceChildren();
  const earlier = answer.readings.filter((reading) => !reading.this_visit);
  for (const reading of answer.readings.filter((r) => r.this_visit).reverse()) addLiveReading({ ...reading, current: true });
  $("#history-empty").hidden = earlier.length > 0;
  $("#history").hidden = earlier.length === 0;
  for (const reading of earlier) {
    const row = document.createElement("tr");
    const cells = [formatTime(reading.measured_at_ms), t(`kind.${reading.kind}`), valueText(reading)];
    for (const text of cells) {
      const cell = document.createElement("td");
      cell.textContent = text;
      row.append(cell);
    }
    const notes = document.createElement("td");
    notes.append(...reading.flags.map((flag) => `${flagText(flag)} `), ...reading.alerts.map(alertElement));
    row.append(notes);
    body.append(row);
  }
}

// ---- the ECG strip ----------------------------------------------------------------------------
async function drawWaveform(reading, element) {
  const strip = await attempt(() => api("GET", `/api/readings/${reading.seq}/waveform`));
  if (!strip) return;
  reading.strip = strip;
  fillReading(element, reading);
  const canvas = $("canvas", element);
  const context = canvas.getContext("2d");
  const width = canvas.width;
  const laneHeight = canvas.height / strip.leads.length;
  // Paper speed is fixed: the canvas is one standard 10 s strip, a shorter one fills part of it.
  const pxPerMm = width / (Math.max(strip.duration_s, ECG_STRIP_S) * ECG_MM_PER_S);
  const pxPerSample = pxPerMm * ECG_MM_PER_S / strip.sample_rate_hz;
  context.fillStyle = "#fff";
  context.fillRect(0, 0, width, canvas.height);
  for (let x = 0, i = 0; x <= width; x += pxPerMm, i += 1) {
    context.strokeStyle = i % 5 === 0 ? "#f2a7b8" : "#fbe3e9";
    context.beginPath();
    context.moveTo(Math.round(x) + 0.5, 0);
    context.lineTo(Math.round(x) + 0.5, canvas.height);
    context.stroke();
  }
  for (let y = 0, i = 0; y <= canvas.height; y += pxPerMm, i += 1) {
    context.strokeStyle = i % 5 === 0 ? "#f2a7b8" : "#fbe3e9";
    context.beginPath();
    context.moveTo(0, Math.round(y) + 0.5);
    context.lineTo(width, Math.round(y) + 0.5);
    context.stroke();
  }
  strip.mv.forEach((series, lead) => {
    if (!series.length) return;
    const sorted = [...series].sort((a, b) => a - b);
    const baseline = sorted[Math.floor(sorted.length / 2)];
    const middle = laneHeight * lead + laneHeight * 0.6;
    context.save();
    context.beginPath();
    context.rect(0, laneHeight * lead, width, laneHeight);
    context.clip();
    context.strokeStyle = "#111";
    context.lineWidth = 1.5;
    context.beginPath();
    series.forEach((mv, i) => {
      const y = middle - (mv - baseline) * ECG_MM_PER_MV * pxPerMm;
      if (i === 0) context.moveTo(0, y);
      else context.lineTo(i * pxPerSample, y);
    });
    context.stroke();
    context.restore();
    context.fillStyle = "#5b6470";
    context.font = "14px sans-serif";
    const name = strip.leads[lead];
    context.fillText(`ecg.lead.${name}` in state.strings ? t(`ecg.lead.${name}`) : name, 6, laneHeight * lead + 16);
  });
  canvas.dataset.seconds = String(strip.duration_s);
  canvas.dataset.drawn = "true";
}

// ---- wiring -----------------------------------------------------------------------------------
function formData(form) {
  return Object.fromEntries(new FormData(form).entries());
}

function wire() {
  $("#lang").addEventListener("change", (event) => {
    localStorage.setItem(LANG_KEY, event.target.value);
    loadLanguage(event.target.value);
  });
  $("#signin-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const { operator, pin } = formData(event.target);
    const answer = await attempt(() => api("POST", "/api/session", { operator: operator.trim(), pin }));
    $("#signin-pin").value = "";
    if (answer) await signedIn(answer.operator);
  });
  $("#sign-out").addEventListener("click", async () => {
    await attempt(() => api("DELETE", "/api/session"));
    signedOut();
  });
  $("#checkin-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const { system, value } = formData(event.target);
    checkIn({ system, value: value.trim() });
  });
  $("#qr-form").addEventListener("submit", (event) => {
    event.preventDefault();
    checkIn({ qr: formData(event.target).qr });
  });
  $("#search-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const last4 = formData(event.target).last4.trim().toUpperCase();
    const answer = await attempt(() => api("GET", `/api/residents?last4=${encodeURIComponent(last4)}`));
    if (!answer) return;
    const list = $("#search-results");
    list.replaceChildren();
    if (!answer.residents.length) {
      const item = document.createElement("li");
      item.textContent = t("checkin.found_none", { last4 });
      list.append(item);
    }
    for (const found of answer.residents) {
      const item = document.createElement("li");
      const text = document.createElement("span");
      text.textContent = t("checkin.found", {
        resident: found.resident, system: systemName(found.system), visits: found.visits, last: formatTime(found.last_visit_ms),
      });
      const pick = document.createElement("button");
      pick.type = "button";
      pick.textContent = t("checkin.pick");
      pick.addEventListener("click", () => checkIn({ previous: found.checkin_id }));
      item.append(text, pick);
      list.append(item);
    }
  });
  $("#checkout").addEventListener("click", async () => {
    const answer = await attempt(() => api("POST", "/api/checkout"));
    if (answer) setCheckin(null);
  });
  for (const type of ["click", "keydown", "touchstart"]) document.addEventListener(type, activity, { passive: true });
}

async function start() {
  wire();
  const saved = localStorage.getItem(LANG_KEY);
  await loadLanguage(LANGS.includes(saved) ? saved : "zh-CN");
  startStatusPolling();
  try {
    const session = await api("GET", "/api/session");
    await signedIn(session.operator);
  } catch (error) {
    show("signin");
  }
}

start();
