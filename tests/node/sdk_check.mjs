// Drives Palisade with the official `openai` Node SDK, as an application would.
//
// Environment: PALISADE_BASE_URL (the gateway's /v1 URL), PALISADE_TOKEN (a tok- token),
// PALISADE_MODEL (the model to ask for), optionally PALISADE_EXTRA_HEADERS (a JSON object
// of headers sent with every request, e.g. to pick a mock upstream's dialect). Prints one
// JSON summary line; exits non-zero with the reason on stderr on any failure.

import assert from "node:assert/strict";
import OpenAI from "openai";

const client = new OpenAI({
  baseURL: process.env.PALISADE_BASE_URL,
  apiKey: process.env.PALISADE_TOKEN,
  maxRetries: 0,
  defaultHeaders: JSON.parse(process.env.PALISADE_EXTRA_HEADERS ?? "{}"),
});
const model = process.env.PALISADE_MODEL;
const messages = [{ role: "user", content: "hello node" }];

/** Streams one chat completion; returns every chunk the SDK yielded. */
async function streamChat(extra) {
  const stream = await client.chat.completions.create({ model, messages, stream: true, ...extra });
  const chunks = [];
  for await (const chunk of stream) chunks.push(chunk);
  return chunks;
}

function text(chunks) {
  return chunks.map((c) => c.choices[0]?.delta?.content ?? "").join("");
}

async function main() {
  const summary = { openai_version: OpenAI.VERSION ?? null };

  const chat = await client.chat.completions.create({ model, messages });
  assert.ok(chat.choices[0].message.content.length > 0, JSON.stringify(chat));
  assert.ok(chat.usage && chat.usage.total_tokens > 0, JSON.stringify(chat));
  summary.chat = chat.choices[0].message.content;

  // The SDK's default: no stream_options, so no usage chunk may reach the client.
  const plain = await streamChat({});
  assert.ok(plain.length > 1, `expected several chunks, got ${plain.length}`);
  const withUsage = plain.filter((c) => c.usage);
  assert.equal(withUsage.length, 0, `unrequested usage chunk: ${JSON.stringify(withUsage)}`);
  summary.stream = { chunks: plain.length, text: text(plain) };

  const counted = await streamChat({ stream_options: { include_usage: true } });
  const last = counted[counted.length - 1];
  assert.ok(last.usage && last.usage.total_tokens > 0, `no usage chunk: ${JSON.stringify(last)}`);
  assert.equal(text(counted), text(plain));
  summary.stream_usage = { chunks: counted.length, usage: last.usage };

  console.log(JSON.stringify(summary));
}

main().catch((err) => {
  console.error(`sdk_check.mjs failed: ${err?.stack ?? err}`);
  process.exit(1);
});
