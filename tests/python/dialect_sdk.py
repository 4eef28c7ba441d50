"""The official `openai` Python SDK through Palisade to an upstream speaking one
dialect of a real server (the mock's `x-mock-dialect`, docs/mock-upstream.md).

Usage: dialect_sdk.py dialect | quota

Environment: PALISADE_BASE_URL (the gateway's /v1 URL), PALISADE_TOKEN (a tok-
token); for `dialect`: MOCK_DIALECT (the dialect name) and MOCK_GZIP (optional,
sent as `x-mock-gzip`). For `quota` the token has `max_requests: 1`.
Prints one JSON summary line; exits non-zero with the reason on failure.
"""

import base64
import json
import os
import struct
import sys

import httpx
import openai

PROMPT = "hello sdk"
STREAM_TEXT = "tok0 tok1 tok2 tok3 tok4 "
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "lookup",
            "description": "Looks a thing up",
            "parameters": {"type": "object", "properties": {"query": {"type": "string"}}},
        },
    }
]


def check(cond, what, detail=None):
    if not cond:
        raise AssertionError(f"{what}: {detail!r}" if detail is not None else what)


def messages():
    return [{"role": "user", "content": PROMPT}]


def stream_chat(client, **extra):
    """Streams a chat completion; returns (text, chunks with usage, empty-choice chunks)."""
    text, usages, empty = [], [], 0
    with client.chat.completions.create(
        model="gpt-4o-mini", messages=messages(), stream=True, **extra
    ) as stream:
        for chunk in stream:
            if chunk.usage is not None:
                usages.append(chunk.usage)
            if not chunk.choices:
                empty += 1
            elif chunk.choices[0].delta.content:
                text.append(chunk.choices[0].delta.content)
    return "".join(text), usages, empty


def dialect_run() -> dict:
    dialect = os.environ["MOCK_DIALECT"]
    headers = {"x-mock-dialect": dialect, "x-mock-fixed": "1"}
    if os.environ.get("MOCK_GZIP"):
        headers["x-mock-gzip"] = os.environ["MOCK_GZIP"]
    client = openai.OpenAI(
        base_url=os.environ["PALISADE_BASE_URL"],
        api_key=os.environ["PALISADE_TOKEN"],
        max_retries=0,
        default_headers=headers,
    )
    summary = {"dialect": dialect, "openai_version": openai.__version__}

    chat = client.chat.completions.create(model="gpt-4o-mini", messages=messages())
    check(chat.choices[0].message.content == f"mock reply: {PROMPT}", "non-stream content", chat)
    check(chat.usage is not None and chat.usage.prompt_tokens == 2, "non-stream usage", chat.usage)
    summary["chat"] = chat.choices[0].message.content

    text, usages, empty = stream_chat(client)
    check(text == STREAM_TEXT, "stream text", text)
    check(not usages and empty == 0, "a usage chunk the client did not ask for", (usages, empty))

    text, usages, _ = stream_chat(client, stream_options={"include_usage": True})
    check(text == STREAM_TEXT, "stream text with include_usage", text)
    if dialect == "llamacpp":
        check(not usages, "llama.cpp sends no stream usage; none may appear", usages)
    else:
        check(len(usages) == 1, "exactly one usage with include_usage", usages)
        u = usages[0]
        check((u.prompt_tokens, u.completion_tokens) == (2, 5), "streamed usage", u)
    summary["stream"] = {"text": text, "usage_chunks": len(usages)}

    call = client.chat.completions.create(model="gpt-4o-mini", messages=messages(), tools=TOOLS)
    tc = call.choices[0].message.tool_calls
    check(call.choices[0].finish_reason == "tool_calls" and tc, "tool call", call)
    check(tc[0].function.name == "lookup", "tool name", tc[0])
    check(json.loads(tc[0].function.arguments) == {"query": PROMPT}, "tool arguments", tc[0])
    args = []
    with client.chat.completions.create(
        model="gpt-4o-mini", messages=messages(), tools=TOOLS, stream=True
    ) as stream:
        for chunk in stream:
            for d in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
                if d.function and d.function.arguments:
                    args.append(d.function.arguments)
    check(json.loads("".join(args)) == {"query": PROMPT}, "streamed tool arguments", args)
    summary["tools"] = tc[0].function.name

    resp = client.responses.create(model="gpt-4o-mini", input=PROMPT)
    check(resp.output_text == f"mock reply: {PROMPT}", "responses text", resp)
    check(resp.usage is not None and resp.usage.input_tokens == 2, "responses usage", resp.usage)
    kinds, deltas, final = [], [], None
    with client.responses.create(model="gpt-4o-mini", input=PROMPT, stream=True) as stream:
        for event in stream:
            kinds.append(event.type)
            if event.type == "response.output_text.delta":
                deltas.append(event.delta)
            if event.type == "response.completed":
                final = event.response
    check(kinds[0] == "response.created" and kinds[-1] == "response.completed", "responses events", kinds)
    check("".join(deltas) == STREAM_TEXT, "responses deltas", deltas)
    check(final is not None and final.usage.output_tokens == 5, "responses final usage", final)
    summary["responses"] = len(kinds)

    # The SDK asks for base64 by default and decodes it; compare with floats.
    emb = client.embeddings.create(model="text-embedding-3-small", input=["a", "b c"])
    floats = client.embeddings.create(
        model="text-embedding-3-small", input=["a", "b c"], encoding_format="float"
    )
    raw = client.embeddings.with_raw_response.create(
        model="text-embedding-3-small", input=["a"], encoding_format="base64"
    )
    b64 = json.loads(raw.http_response.content)["data"][0]["embedding"]
    check(isinstance(b64, str), "base64 embedding on the wire", b64)
    decoded = list(struct.unpack("<8f", base64.b64decode(b64)))
    check(decoded == list(emb.data[0].embedding), "base64 decodes as little-endian f32", (decoded, emb.data[0]))
    for got, want in zip(emb.data, floats.data):
        check(len(got.embedding) == 8, "8 dimensions", got)
        check(all(abs(a - b) < 1e-6 for a, b in zip(got.embedding, want.embedding)), "base64 == float", (got, want))
    summary["embeddings"] = len(emb.data)

    model = client.models.retrieve("gpt-4o-mini")
    check(model.id == "gpt-4o-mini", "models.retrieve", model)
    summary["model"] = model.id
    return summary


def quota_run() -> dict:
    """A token with max_requests: 1 under the SDK's default retries."""
    sent = []
    http = httpx.Client(event_hooks={"request": [lambda r: sent.append(r.url.path)]})
    client = openai.OpenAI(
        base_url=os.environ["PALISADE_BASE_URL"], api_key=os.environ["PALISADE_TOKEN"], http_client=http
    )
    check(client.max_retries == openai.DEFAULT_MAX_RETRIES and client.max_retries > 0, "default retries", client.max_retries)
    client.chat.completions.create(model="gpt-4o-mini", messages=messages())
    before = len(sent)
    try:
        client.chat.completions.create(model="gpt-4o-mini", messages=messages())
    except openai.RateLimitError as e:
        refused = e
    else:
        raise AssertionError("a second request on a max_requests: 1 token was served")
    second = len(sent) - before
    check(second == 1, f"the SDK sent {second} requests for the refused call (retried a permanent refusal)", sent)
    check(refused.code == "quota_exceeded", "the error code", refused.body)
    headers = dict(refused.response.headers)
    check(headers.get("x-should-retry") == "false", "x-should-retry: false", headers)
    summary = {"code": refused.code, "requests_for_refused_call": second}
    return summary


def main() -> None:
    mode = sys.argv[1] if len(sys.argv) > 1 else "dialect"
    summary = quota_run() if mode == "quota" else dialect_run()
    print(json.dumps(summary))


if __name__ == "__main__":
    try:
        main()
    except Exception as exc:  # noqa: BLE001 - report any failure clearly
        print(f"dialect_sdk failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        sys.exit(1)
