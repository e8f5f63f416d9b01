// The kiosk screen for village doctors and vehicle crews: sign in, check a resident in, take
// the measurements live, see the sync state. Plain JavaScript, nothing from the network: the
// kiosk works with its 4G link down. All texts come from i18n/<lang>.json (zh-CN by default);
// the language chosen is remembered in this browser.
//
// Views are the <section data-view> elements; VIEWS says what each does when shown. A new task is
// one section and one entry: the chronic-disease follow-up questionnaire ("followup", drawn from
// the questionnaire's definition) and the vehicle's day of outreach ("queue") are two.
"use strict";

const LANGS = ["zh-CN", "en"];
const LANG_KEY = "kiosk.lang";
const STATUS_POLL_MS = 2000;
const ACTIVITY_PING_MS = 60000;
const ECG_MM_PER_S = 25;
const ECG_MM_PER_MV = 10;
const ECG_STRIP_S = 10;
const INFO_MESSAGE_MS = 8000;

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
  fromQueue: false, // the checked-in resident was picked from the day's queue
  queue: null, // the day's outreach queue as last loaded
  lastImport: null, // the last CSV import's answer: how many came in, the rows refused
  definitions: new Map(), // questionnaire id -> its definition
  followupDue: null, // the checked-in resident's follow-up: questionnaire, conditions, last
  followup: null, // the form being filled: definition, submission number, texts to translate
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
  renderQueue();
  renderImport();
  renderFollowupDue();
  applyFollowupTexts();
}

function alertText(alert, field) {
  return alert[field] ? alert[field][state.lang] || alert[field].en : null;
}

// ---- messages -----------------------------------------------------------------------------
let messageTimer = null;

function showMessage(text, kind = "error") {
  const box = $("#message");
  box.textContent = text;
  box.className = kind;
  box.hidden = false;
  clearTimeout(messageTimer);
  if (kind === "info") messageTimer = setTimeout(clearMessage, INFO_MESSAGE_MS);
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

// `body` goes as JSON, or as it is when `contentType` is given (a CSV file's bytes).
async function api(method, path, body, contentType) {
  let response;
  try {
    response = await fetch(path, {
      method,
      credentials: "same-origin",
      headers: body ? { "Content-Type": contentType || "application/json" } : {},
      body: body ? (contentType ? body : JSON.stringify(body)) : undefined,
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
    if ($("#message").className !== "info") clearMessage(); // a confirmation stays a while
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
    loadQueueSummary();
  },
  check: () => {
    loadHistory();
    loadFollowupDue();
  },
  queue: () => loadQueue(),
  followup: () => {
    const first = $("#followup-items input");
    if (first) first.focus();
  },
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
  // A vehicle crew works from the day's queue.
  if (!state.checkin && operator.role === "crew") show("queue");
}

function signedOut() {
  state.operator = null;
  state.checkin = null;
  state.live.clear();
  // Nothing of a resident stays on the page, not even hidden.
  for (const selector of [
    "#live", "#refused", "#history tbody", "#search-results", "#resident", "#queue-table tbody",
    "#queue-rejected", "#queue-summary", "#followup-items", "#followup-resident", "#followup-due-text",
    "#followup-last",
  ]) {
    $(selector).replaceChildren();
  }
  state.queue = null;
  state.lastImport = null;
  state.fromQueue = false;
  state.followup = null;
  state.followupDue = null;
  state.definitions.clear();
  $("#queue-imported").hidden = true;
  $("#followup-due").hidden = true;
  $("#open-followup").hidden = true;
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
    state.followup = null; // a form half filled belongs to the resident who left
    state.followupDue = null;
    $("#followup-due").hidden = true;
    $("#open-followup").hidden = true;
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
  state.fromQueue = false;
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
  if (reading.kind === "questionnaire") return answersText(reading.questionnaire);
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
  const source = reading.kind === "questionnaire" && reading.questionnaire && reading.questionnaire.title
    ? localText(reading.questionnaire.title)
    : reading.device.model;
  $(".device", element).textContent = `${source} · ${reading.state === "synced" ? t("check.synced") : t("check.not_synced")}`;
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
  // A crossed rule (or a follow-up just saved) may change who is under management.
  if (reading.alerts.length || reading.kind === "questionnaire") scheduleFollowupDue();
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

// ---- the chronic-disease follow-up questionnaire ----------------------------------------------
// The form is drawn from the questionnaire's definition (the gateway's data file): sections,
// questions and options in both languages, units, and which questions follow from which answers.
function localText(texts) {
  return texts ? texts[state.lang] || texts.en || "" : "";
}

function answersText(questionnaire) {
  if (!questionnaire || !questionnaire.answers) return t("followup.unreadable");
  return questionnaire.answers
    .map((answer) => t("followup.answer", { question: localText(answer.question), answer: localText(answer.text) }))
    .join(t("list.item_separator"));
}

async function questionnaireDefinition(id) {
  if (!state.definitions.has(id)) {
    const definition = await attempt(() => api("GET", `/api/questionnaires/${encodeURIComponent(id)}`));
    if (!definition) return null;
    state.definitions.set(id, definition);
  }
  return state.definitions.get(id);
}

async function loadFollowupDue() {
  const checkin = state.checkin;
  if (!checkin) return;
  const answer = await attempt(() => api("GET", "/api/resident/followup"));
  if (!answer || !answer.followups.length || state.checkin !== checkin) return;
  const [due] = answer.followups;
  const definition = await questionnaireDefinition(due.questionnaire);
  if (!definition || state.checkin !== checkin) return;
  state.followupDue = { ...due, definition };
  renderFollowupDue();
}

let followupDueTimer = null;

function scheduleFollowupDue() {
  // Several readings may arrive at once (the history of this visit): ask once.
  clearTimeout(followupDueTimer);
  followupDueTimer = setTimeout(loadFollowupDue, 300);
}

function conditionNames(definition, codes) {
  const item = definition.items.find((candidate) => candidate.link_id === definition.management_item);
  return codes.map((code) => {
    const option = item && item.options.find((candidate) => candidate.code === code);
    return option ? localText(option.text) : code;
  });
}

function renderFollowupDue() {
  const due = state.followupDue;
  const button = $("#open-followup");
  button.hidden = !due;
  if (!due) return;
  // Done in this visit (a board stamps whole seconds, as the readings' this_visit does).
  const done = !!(due.last && state.checkin && due.last.at_ms + 999 >= state.checkin.started_ms);
  const conditions = conditionNames(due.definition, due.conditions).join(t("list.separator"));
  button.textContent = t("check.followup");
  button.classList.toggle("due-button", due.conditions.length > 0 && !done);
  $("#followup-due").hidden = !due.conditions.length;
  $("#followup-due").dataset.done = String(done);
  $("#followup-due-text").textContent = due.conditions.length
    ? t(done ? "followup.done" : "followup.due", { conditions })
    : "";
  $("#followup-last").textContent = due.last ? t("followup.last", { date: formatTime(due.last.at_ms) }) : t("followup.never");
}

function randomSubmission() {
  // The form's number (1 .. 2^53-1): a second send of the same form is stored once.
  const words = crypto.getRandomValues(new Uint32Array(2));
  return (words[0] & 0x1fffff) * 2 ** 32 + words[1] || 1;
}

function translated(element, texts) {
  state.followup.texts.push([element, texts]);
  element.textContent = localText(texts);
  return element;
}

function applyFollowupTexts() {
  const form = state.followup;
  if (!form) return;
  for (const [element, texts] of form.texts) element.textContent = localText(texts);
  $("#followup-title").textContent = localText(form.definition.title);
  $("#followup-resident").textContent = state.checkin
    ? t("followup.resident", { resident: state.checkin.resident, system: systemName(state.checkin.system) })
    : "";
}

function optionLabel(type, name, value, text) {
  const label = document.createElement("label");
  label.className = "choice";
  const input = document.createElement("input");
  input.type = type;
  input.name = name;
  input.value = value;
  const span = document.createElement("span");
  if (typeof text === "string") {
    span.dataset.i18n = text; // yes / no: the screen's own texts
    span.textContent = t(text);
  } else {
    translated(span, text);
  }
  label.append(input, span);
  return label;
}

function questionElement(item) {
  const fieldset = document.createElement("fieldset");
  fieldset.className = "question";
  fieldset.dataset.linkId = item.link_id;
  fieldset.dataset.type = item.type;
  const legend = document.createElement("legend");
  legend.append(translated(document.createElement("span"), item.text));
  if (item.required) {
    const mark = document.createElement("span");
    mark.className = "required";
    mark.textContent = " *";
    legend.append(mark);
  }
  fieldset.append(legend);
  const name = `q-${item.link_id}`;
  if (item.type === "boolean") {
    fieldset.append(optionLabel("radio", name, "true", "followup.yes"), optionLabel("radio", name, "false", "followup.no"));
  } else if (item.type === "choice") {
    for (const option of item.options) {
      const label = optionLabel(item.repeats ? "checkbox" : "radio", name, option.code, option.text);
      if (option.exclusive) label.dataset.exclusive = "true";
      fieldset.append(label);
    }
  } else {
    const label = document.createElement("label");
    label.className = "number";
    const input = document.createElement("input");
    input.type = "text";
    input.name = name;
    input.inputMode = item.type === "integer" ? "numeric" : "decimal";
    input.maxLength = 12;
    if (item.min !== null && item.max !== null) input.placeholder = `${item.min}–${item.max}`;
    label.append(input);
    if (item.unit_text) label.append(translated(document.createElement("span"), item.unit_text));
    fieldset.append(label);
  }
  return fieldset;
}

function buildFollowupForm(due) {
  const { definition } = state.followup;
  const container = $("#followup-items");
  container.replaceChildren();
  let section = null;
  for (const item of definition.items) {
    if (item.section && item.section !== section) {
      section = item.section;
      const heading = translated(document.createElement("h2"), definition.sections[section]);
      heading.className = "section";
      container.append(heading);
    }
    container.append(questionElement(item));
  }
  // What the kiosk knows already: the conditions under management, and where this visit is.
  for (const code of due.conditions) {
    const box = $(`fieldset[data-link-id="${definition.management_item}"] input[value="${code}"]`, container);
    if (box) box.checked = true;
  }
  const mode = $(`fieldset[data-link-id="visit_mode"] input[value="${state.fromQueue ? "home" : "clinic"}"]`, container);
  if (mode) mode.checked = true;
  followupAnswers();
  applyFollowupTexts();
}

function isShown(item, answers) {
  const when = item.enable_when;
  if (!when) return true;
  const given = answers[when.item];
  return Array.isArray(given) ? given.includes(when.answer) : given === when.answer;
}

function readQuestion(item, fieldset) {
  if (item.type === "boolean") {
    const checked = $("input:checked", fieldset);
    return checked ? checked.value === "true" : null;
  }
  if (item.type === "choice") {
    const codes = [...fieldset.querySelectorAll("input:checked")].map((input) => input.value);
    if (item.repeats) return codes.length ? codes : null;
    return codes.length ? codes[0] : null;
  }
  const value = $("input", fieldset).value.trim();
  return value === "" ? null : value;
}

// The answers of the questions shown; shows and hides the questions that follow from answers.
function followupAnswers() {
  const answers = {};
  for (const item of state.followup.definition.items) {
    const fieldset = $(`#followup-items fieldset[data-link-id="${item.link_id}"]`);
    const shown = isShown(item, answers);
    fieldset.hidden = !shown;
    for (const input of fieldset.querySelectorAll("input")) input.disabled = !shown;
    if (!shown) continue;
    const value = readQuestion(item, fieldset);
    if (value !== null) answers[item.link_id] = value;
  }
  return answers;
}

function openFollowup() {
  const due = state.followupDue;
  if (!due || !state.checkin) return;
  state.followup = { definition: due.definition, submission: randomSubmission(), texts: [] };
  buildFollowupForm(due);
  show("followup");
}

async function submitFollowup(event) {
  event.preventDefault();
  const form = state.followup;
  if (!form) return;
  for (const element of document.querySelectorAll("#followup-items .invalid")) element.classList.remove("invalid");
  clearMessage();
  const body = { questionnaire: form.definition.id, answers: followupAnswers(), submission: form.submission };
  try {
    const answer = await api("POST", "/api/resident/questionnaire", body);
    state.followup = null;
    show("check");
    showMessage(answer.duplicate ? t("followup.duplicate") : t("followup.saved"), "info");
  } catch (error) {
    if (error instanceof ApiError && error.status === 401) return; // the sign-in screen says why
    const item = error.facts && form.definition.items.find((candidate) => candidate.link_id === error.facts.item);
    if (item) {
      const fieldset = $(`#followup-items fieldset[data-link-id="${item.link_id}"]`);
      fieldset.classList.add("invalid");
      fieldset.scrollIntoView({ block: "center" });
      error.facts = { ...error.facts, item: localText(item.text) };
    }
    showMessage(errorText(error));
  }
}

function wireFollowup() {
  $("#open-followup").addEventListener("click", openFollowup);
  $("#followup-cancel").addEventListener("click", () => {
    state.followup = null;
    show("check");
  });
  $("#followup-form").addEventListener("submit", submitFollowup);
  $("#followup-items").addEventListener("change", (event) => {
    const input = event.target;
    if (input.type === "checkbox" && input.checked) {
      // "No symptoms" and a symptom exclude each other.
      const exclusive = input.closest("label").dataset.exclusive === "true";
      for (const label of input.closest("fieldset").querySelectorAll("label.choice")) {
        const other = $("input", label);
        if (other !== input && (exclusive || label.dataset.exclusive === "true")) other.checked = false;
      }
    }
    input.closest("fieldset").classList.remove("invalid");
    followupAnswers();
  });
}

// ---- the vehicle's day of outreach -------------------------------------------------------------
function todayLocal() {
  const now = new Date();
  const pad = (n) => String(n).padStart(2, "0");
  return `${now.getFullYear()}-${pad(now.getMonth() + 1)}-${pad(now.getDate())}`;
}

async function loadQueueSummary() {
  const answer = await attempt(() => api("GET", `/api/queue?day=${todayLocal()}&counts_only=true`));
  if (answer) renderQueueSummary(answer.progress);
}

function renderQueueSummary(progress) {
  $("#queue-summary").textContent = progress.total ? t("queue.summary", progress) : t("queue.summary_empty");
}

async function loadQueue() {
  const answer = await attempt(() => api("GET", `/api/queue?day=${todayLocal()}`));
  if (!answer) return;
  state.queue = answer;
  renderQueue();
}

function queueButton(action, key, className) {
  const button = document.createElement("button");
  button.type = "button";
  button.dataset.action = action;
  button.textContent = t(key);
  if (className) button.className = className;
  return button;
}

function renderQueue() {
  const queue = state.queue;
  if (!queue) return;
  const { total, checked } = queue.progress;
  $("#queue-day").textContent = t("queue.day", { day: queue.day });
  $("#queue-progress").textContent = t("queue.progress", queue.progress);
  $("#queue-bar").style.width = total ? `${Math.round((100 * checked) / total)}%` : "0";
  renderQueueSummary(queue.progress);
  $("#queue-empty").hidden = total > 0;
  $("#queue-table").hidden = total === 0;
  const body = $("#queue-table tbody");
  body.replaceChildren();
  for (const entry of queue.entries) {
    const row = document.createElement("tr");
    row.dataset.id = String(entry.id);
    row.dataset.state = entry.state;
    row.dataset.current = String(entry.current);
    const stateText = entry.current ? `${t(`queue.state.${entry.state}`)} · ${t("queue.current")}` : t(`queue.state.${entry.state}`);
    const cells = [String(entry.position), entry.name || "–", entry.village || "–", entry.resident, stateText];
    for (const text of cells) {
      const cell = document.createElement("td");
      cell.textContent = text;
      row.append(cell);
    }
    const kind = document.createElement("span");
    kind.className = "system";
    kind.textContent = systemName(entry.system);
    row.children[3].append(kind);
    row.children[3].className = "number";
    row.children[4].className = "state";
    const actions = document.createElement("td");
    actions.className = "actions";
    if (!entry.current) {
      actions.append(queueButton("checkin", entry.state === "checked" ? "queue.checkin_again" : "queue.checkin"));
    }
    if (entry.state === "waiting") actions.append(queueButton("skip", "queue.skip", "secondary"));
    if (entry.state === "skipped") actions.append(queueButton("unskip", "queue.unskip", "secondary"));
    if (entry.state !== "checked") actions.append(queueButton("remove", "queue.remove", "link"));
    row.append(actions);
    body.append(row);
  }
}

async function queueAction(entry, action) {
  if (action === "checkin") {
    const answer = await attempt(() => api("POST", `/api/queue/${entry.id}/checkin`));
    if (!answer) return;
    $("#first-visit").hidden = answer.seen_before;
    state.fromQueue = true;
    setCheckin(answer.checked_in);
    return;
  }
  if (action === "remove") {
    if (!window.confirm(t("queue.remove_confirm", { name: entry.name || entry.resident }))) return;
    if (!(await attempt(() => api("DELETE", `/api/queue/${entry.id}`)))) return;
  } else {
    const body = { state: action === "skip" ? "skipped" : "waiting" };
    if (!(await attempt(() => api("POST", `/api/queue/${entry.id}/state`, body)))) return;
  }
  await loadQueue();
}

function renderImport() {
  const answer = state.lastImport;
  $("#queue-imported").hidden = !answer;
  if (!answer) return;
  $("#queue-imported").textContent = t("queue.imported", { added: answer.added, rejected: answer.rejected.length });
  $("#queue-rejected").replaceChildren(
    ...answer.rejected.map((row) => {
      const item = document.createElement("li");
      const reason = errorText({ code: row.error, message: row.message, facts: row });
      item.textContent = t("queue.rejected_row", { line: row.line, name: row.name || "–", reason });
      return item;
    }),
  );
}

function wireQueue() {
  $("#open-queue").addEventListener("click", () => show("queue"));
  $("#queue-back").addEventListener("click", () => show(state.checkin ? "check" : "checkin"));
  $("#queue-table tbody").addEventListener("click", (event) => {
    const button = event.target.closest("button[data-action]");
    if (!button || !state.queue) return;
    const entry = state.queue.entries.find((candidate) => String(candidate.id) === button.closest("tr").dataset.id);
    if (entry) queueAction(entry, button.dataset.action);
  });
  $("#queue-add-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const { name, village, system, value } = formData(event.target);
    const body = { day: todayLocal(), name: name.trim(), village: village.trim(), system, value: value.trim() };
    if (!(await attempt(() => api("POST", "/api/queue", body)))) return;
    event.target.reset();
    await loadQueue();
    $("#queue-name").focus();
  });
  $("#queue-import-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const file = $("#queue-file").files[0];
    if (!file) {
      showMessage(t("queue.import_none"));
      return;
    }
    const data = await file.arrayBuffer();
    const answer = await attempt(() => api("POST", `/api/queue/import?day=${todayLocal()}`, data, "text/csv"));
    if (!answer) return;
    state.lastImport = answer;
    renderImport();
    event.target.reset();
    await loadQueue();
  });
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
    if (!answer) return;
    const backToQueue = state.fromQueue;
    state.fromQueue = false;
    setCheckin(null);
    if (backToQueue) show("queue"); // the next resident of the day
  });
  wireFollowup();
  wireQueue();
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
