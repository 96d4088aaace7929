// The chat page: streams /v1/chat/completions with fetch; reasoning folded, speed from the usage chunk.
"use strict";
const $ = (id) => document.getElementById(id);
const history = [];
let model = null;
let controller = null;

function apiKey() { return localStorage.getItem("dllama-api-key") || ""; }

async function api(path, options = {}) {
  for (;;) {
    const headers = { "Content-Type": "application/json", ...(options.headers || {}) };
    if (apiKey()) headers.Authorization = "Bearer " + apiKey();
    const response = await fetch(path, { ...options, headers });
    if (response.status !== 401) return response;
    const key = prompt("This server needs an API key:");
    if (!key) return response;
    localStorage.setItem("dllama-api-key", key);
  }
}

function bubble(kind, text = "") {
  const div = document.createElement("div");
  div.className = "msg " + kind;
  div.textContent = text;
  $("log").appendChild(div);
  div.scrollIntoView({ block: "end" });
  return div;
}

async function loadModel() {
  const response = await api("/v1/models");
  if (!response.ok) { $("model").textContent = "(no model)"; return; }
  model = (await response.json()).data[0].id;
  $("model").textContent = model;
}

function* events(buffer) {  // complete "data: ..." lines of an SSE buffer; the rest stays
  let end;
  while ((end = buffer.text.indexOf("\n\n")) >= 0) {
    const block = buffer.text.slice(0, end);
    buffer.text = buffer.text.slice(end + 2);
    for (const line of block.split("\n")) if (line.startsWith("data: ")) yield line.slice(6);
  }
}

async function send(text) {
  history.push({ role: "user", content: text });
  bubble("user", text);
  const reply = bubble("assistant");
  const reasoning = document.createElement("details");
  reasoning.className = "reasoning";
  reasoning.innerHTML = "<summary>Reasoning</summary>";
  const thought = document.createElement("div");
  reasoning.appendChild(thought);
  const answer = document.createElement("div");
  answer.className = "answer";
  reply.append(answer);
  controller = new AbortController();
  $("send").hidden = true; $("stop").hidden = false;
  const started = performance.now();
  let firstToken = null, content = "";
  try {
    const response = await api("/v1/chat/completions", {
      method: "POST", signal: controller.signal,
      body: JSON.stringify({ model, messages: history, stream: true, stream_options: { include_usage: true } }),
    });
    if (!response.ok) throw new Error((await response.json()).error.message);
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    const buffer = { text: "" };
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer.text += decoder.decode(value, { stream: true });
      for (const data of events(buffer)) {
        if (data === "[DONE]") continue;
        const chunk = JSON.parse(data);
        if (chunk.error) throw new Error(chunk.error.message);
        if (chunk.usage && firstToken !== null) {
          const seconds = (performance.now() - firstToken) / 1000;
          const rate = chunk.usage.completion_tokens > 1 ? (chunk.usage.completion_tokens - 1) / seconds : 0;
          $("speed").textContent = `${chunk.usage.completion_tokens} tokens, ${rate.toFixed(1)} tok/s, ` +
            `first token after ${((firstToken - started) / 1000).toFixed(2)} s`;
        }
        for (const choice of chunk.choices || []) {
          const delta = choice.delta || {};
          if (delta.reasoning_content) {
            if (!reasoning.parentNode) reply.insertBefore(reasoning, answer);
            thought.textContent += delta.reasoning_content;
          }
          if (delta.content) { content += delta.content; answer.textContent = content; }
          if ((delta.content || delta.reasoning_content) && firstToken === null) firstToken = performance.now();
          for (const call of delta.tool_calls || []) {
            answer.textContent += `\n[tool call] ${call.function.name}(${call.function.arguments})`;
          }
        }
        reply.scrollIntoView({ block: "end" });
      }
    }
  } catch (error) {
    if (error.name !== "AbortError") bubble("error", String(error.message || error));
  } finally {
    history.push({ role: "assistant", content });
    controller = null;
    $("send").hidden = false; $("stop").hidden = true;
  }
}

$("form").addEventListener("submit", (event) => {
  event.preventDefault();
  const text = $("input").value.trim();
  if (!text || controller) return;
  $("input").value = "";
  send(text);
});
$("input").addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey) { event.preventDefault(); $("form").requestSubmit(); }
});
$("stop").addEventListener("click", () => controller && controller.abort());
$("clear").addEventListener("click", () => { history.length = 0; $("log").textContent = ""; });
loadModel();
