"use strict";
// The chat page of `paddle-belle serve`: one more client of /v1/chat/completions, streamed as server-sent events
// (the OpenAI wire format). Nothing is loaded from elsewhere. The API key is what the user types into the page;
// it stays in this page's memory and goes only into the Authorization header of /v1 requests.

const $ = (id) => document.getElementById(id);
const FIELDS = ["temperature", "top_k", "top_p", "repetition_penalty", "max_tokens"];
// history: the conversation sent with each question; a new chat starts a new array (a reply still being stopped
// then finishes into the old one).
const state = {settings: null, history: [], controller: null};

async function loadSettings() {
  const r = await fetch("/page/settings");
  const s = state.settings = await r.json();
  $("model").textContent = s.model;
  document.title = `${s.model} · paddle-belle chat`;
  addOptions($("preset"), ["server default", ...Object.keys(s.presets)]);
  addOptions($("style"), s.styles);
  $("style").value = s.style;
  $("max_tokens").max = s.max_tokens;
  applyPreset("server default");
  $("key-row").hidden = !s.api_key_required;
  if (s.api_key_required) {
    showSettings(true);
    $("status").textContent = "This server needs its API key: type it under Settings.";
  }
}

function addOptions(select, names) {
  for (const name of names) select.append(new Option(name, name));
}

function applyPreset(name) {
  const s = state.settings, values = s.presets[name] || s.defaults;
  for (const f of FIELDS) $(f).value = f === "max_tokens" ? Math.min(values[f], s.max_tokens) : values[f];
}

function showSettings(on) {
  $("settings").hidden = !on;
  $("toggle-settings").setAttribute("aria-expanded", String(on));
}

function addMessage(role, text) {
  const el = document.createElement("div");
  el.className = `msg ${role}`;
  el.textContent = text;
  $("messages").append(el);
  scrollDown();
  return el;
}

function scrollDown() {
  const m = $("messages");
  m.scrollTop = m.scrollHeight;
}

function busy(on) {
  $("send").hidden = on;
  $("stop").hidden = !on;
}

// The events of a server-sent-event stream: each "data: {json}" block, until "data: [DONE]".
async function* events(body) {
  const reader = body.getReader(), decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const {value, done} = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, {stream: true});
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const data = buffer.slice(0, end).split("\n").filter((l) => l.startsWith("data:"))
        .map((l) => l.slice(5).trim()).join("\n");
      buffer = buffer.slice(end + 2);
      if (data === "[DONE]") return;
      if (data) yield JSON.parse(data);
    }
  }
}

// One readable line for a failed request: the status and the server's message (OpenAI's error body).
async function errorText(r) {
  let message = r.statusText;
  try {
    message = (await r.json()).error.message;
  } catch (e) { /* not OpenAI's error body: the status text will do */ }
  const hint = r.status === 401 ? " Type the server's API key under Settings." : "";
  return `Error ${r.status}: ${message}.${hint}`;
}

function request(history) {
  const body = {model: state.settings.model, messages: history.slice(), stream: true,
                stream_options: {include_usage: true}, prompt_style: $("style").value};
  for (const f of FIELDS) {
    if ($(f).value !== "") body[f] = Number($(f).value);
  }
  const headers = {"Content-Type": "application/json"};
  const key = $("api-key").value.trim();
  if (key) headers.Authorization = `Bearer ${key}`;
  return {method: "POST", headers, body: JSON.stringify(body)};
}

async function send() {
  const text = $("input").value.trim();
  if (!text || state.controller || !state.settings) return;
  $("input").value = "";
  const history = state.history;
  history.push({role: "user", content: text});
  const question = addMessage("user", text);
  const el = addMessage("assistant pending", "");
  const controller = state.controller = new AbortController();
  busy(true);
  $("status").textContent = "…";
  const start = performance.now();
  let reply = "", usage = null, finish = null;
  try {
    const r = await fetch("/v1/chat/completions", {...request(history), signal: controller.signal});
    if (!r.ok) throw new Error(await errorText(r));
    for await (const event of events(r.body)) {
      if (event.error) throw new Error(`Error: ${event.error.message}`);
      if (event.usage) usage = event.usage;
      for (const choice of event.choices || []) {
        if (choice.delta && choice.delta.content) {
          reply += choice.delta.content;
          el.textContent = reply;
          scrollDown();
        }
        finish = choice.finish_reason || finish;
      }
    }
    reply = reply.trimEnd();
    el.textContent = reply;
    history.push({role: "assistant", content: reply});
    const seconds = (performance.now() - start) / 1000, tokens = usage ? usage.completion_tokens : 0;
    $("status").textContent = `${tokens} tokens in ${seconds.toFixed(1)} s · ${(tokens / seconds).toFixed(1)} tokens/s`
      + (finish === "length" ? " · cut at max tokens" : "");
  } catch (e) {
    if (e.name === "AbortError") {  // stopped: the partial reply stays in the conversation
      el.dataset.stopped = "true";
      if (reply) history.push({role: "assistant", content: reply.trimEnd()});
      else history.pop();
      if (history === state.history) $("status").textContent = "stopped";  // not after New chat
    } else {  // not sent or failed: the question leaves the history and goes back into the box to retry
      history.pop();
      question.classList.add("failed");
      el.className = "msg error";
      el.textContent = e.message;
      if (!$("input").value) $("input").value = text;
      $("status").textContent = "";
    }
  } finally {
    el.classList.remove("pending");
    if (state.controller === controller) state.controller = null;
    busy(false);
  }
}

function newChat() {
  if (state.controller) state.controller.abort();
  state.controller = null;
  state.history = [];
  $("messages").replaceChildren();
  $("status").textContent = "";
  $("input").focus();
}

$("input").addEventListener("keydown", (e) => {
  // An input method (Chinese pinyin, ...) confirms its candidate with Enter: that Enter belongs to the IME, not a
  // send. keyCode 229 is what Safari (and older Chrome) report during composition instead of isComposing.
  if (e.key === "Enter" && !e.shiftKey && !e.isComposing && e.keyCode !== 229) {
    e.preventDefault();
    send();
  }
});
$("send").addEventListener("click", send);
$("stop").addEventListener("click", () => state.controller && state.controller.abort());
$("new-chat").addEventListener("click", newChat);
$("preset").addEventListener("change", (e) => applyPreset(e.target.value));
$("toggle-settings").addEventListener("click", () => showSettings($("settings").hidden));
$("settings").addEventListener("submit", (e) => e.preventDefault());
loadSettings().catch((e) => { $("status").textContent = `Could not load the server's settings: ${e.message}`; });
