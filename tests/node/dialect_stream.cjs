// The official `openai` Node SDK streaming through Palisade to an upstream speaking
// one dialect of a real server (the mock's `x-mock-dialect`, docs/mock-upstream.md).
//
// Environment: PALISADE_BASE_URL (the gateway's /v1 URL), PALISADE_TOKEN, MOCK_DIALECT,
// MOCK_GZIP (optional, sent as `x-mock-gzip`); NODE_PATH finds the `openai` package.
// Prints one JSON summary line; exits non-zero with the reason on failure.
"use strict";

const { OpenAI } = require("openai");

const PROMPT = "hello sdk";
const STREAM_TEXT = "tok0 tok1 tok2 tok3 tok4 ";
const TOOLS = [{
  type: "function",
  function: { name: "lookup", description: "Looks a thing up",
    parameters: { type: "object", properties: { query: { type: "string" } } } },
}];

function check(cond, what, detail) {
  if (!cond) throw new Error(`${what}: ${JSON.stringify(detail)}`);
}

async function streamChat(client, extra) {
  const stream = await client.chat.completions.create({
    model: "gpt-4o-mini", messages: [{ role: "user", content: PROMPT }], stream: true, ...extra,
  });
  let text = "", args = "", empty = 0;
  const usages = [];
  for await (const chunk of stream) {
    if (chunk.usage) usages.push(chunk.usage);
    if (!chunk.choices || chunk.choices.length === 0) { empty += 1; continue; }
    const delta = chunk.choices[0].delta || {};
    if (delta.content) text += delta.content;
    for (const call of delta.tool_calls || []) args += (call.function && call.function.arguments) || "";
  }
  return { text, args, usages, empty };
}

async function main() {
  const dialect = process.env.MOCK_DIALECT;
  const headers = { "x-mock-dialect": dialect, "x-mock-fixed": "1" };
  if (process.env.MOCK_GZIP) headers["x-mock-gzip"] = process.env.MOCK_GZIP;
  const client = new OpenAI({
    baseURL: process.env.PALISADE_BASE_URL, apiKey: process.env.PALISADE_TOKEN,
    maxRetries: 0, defaultHeaders: headers,
  });
  const summary = { dialect };

  let r = await streamChat(client, {});
  check(r.text === STREAM_TEXT, "stream text", r.text);
  check(r.usages.length === 0 && r.empty === 0, "a usage chunk the client did not ask for", r);

  r = await streamChat(client, { stream_options: { include_usage: true } });
  check(r.text === STREAM_TEXT, "stream text with include_usage", r.text);
  if (dialect === "llamacpp") {
    check(r.usages.length === 0, "llama.cpp sends no stream usage; none may appear", r.usages);
  } else {
    check(r.usages.length === 1, "exactly one usage with include_usage", r.usages);
    const u = r.usages[0];
    check(u.prompt_tokens === 2 && u.completion_tokens === 5, "streamed usage", u);
  }
  summary.usage_chunks = r.usages.length;

  r = await streamChat(client, { tools: TOOLS });
  check(JSON.stringify(JSON.parse(r.args)) === JSON.stringify({ query: PROMPT }), "streamed tool arguments", r.args);

  const events = [];
  let deltas = "", final = null;
  const rs = await client.responses.create({ model: "gpt-4o-mini", input: PROMPT, stream: true });
  for await (const ev of rs) {
    events.push(ev.type);
    if (ev.type === "response.output_text.delta") deltas += ev.delta;
    if (ev.type === "response.completed") final = ev.response;
  }
  check(events[0] === "response.created" && events[events.length - 1] === "response.completed", "responses events", events);
  check(deltas === STREAM_TEXT, "responses deltas", deltas);
  check(final && final.usage && final.usage.output_tokens === 5, "responses final usage", final);
  summary.responses_events = events.length;

  process.stdout.write(JSON.stringify(summary) + "\n");
}

main().catch((e) => {
  process.stderr.write(`dialect_stream failed: ${e && e.stack ? e.stack : e}\n`);
  process.exit(1);
});
