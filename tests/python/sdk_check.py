"""Drive Palisade with the official `openai` Python SDK, as an application would.

Environment: PALISADE_BASE_URL (the gateway's /v1 URL), PALISADE_TOKEN (a working
tok- token), PALISADE_REVOKED_TOKEN (a revoked one), PALISADE_MODELS (comma list the
gateway should advertise). Prints one JSON summary line; exits non-zero on failure.
"""

import json
import os
import sys

import openai


def main() -> None:
    base = os.environ["PALISADE_BASE_URL"]
    client = openai.OpenAI(base_url=base, api_key=os.environ["PALISADE_TOKEN"], max_retries=0)
    summary = {"openai_version": openai.__version__}

    chat = client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hello sdk"}]
    )
    assert chat.choices[0].message.content == "mock reply: hello sdk", chat
    assert chat.usage is not None and chat.usage.total_tokens > 0, chat
    summary["chat"] = chat.choices[0].message.content

    deltas = []
    chunks = 0
    with client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "stream please"}],
        stream=True,
    ) as stream:
        for chunk in stream:
            chunks += 1
            if chunk.choices and chunk.choices[0].delta.content:
                deltas.append(chunk.choices[0].delta.content)
    text = "".join(deltas)
    assert text == "tok0 tok1 tok2 tok3 tok4 ", text
    assert chunks > 1, chunks
    summary["stream"] = {"chunks": chunks, "text": text}

    emb = client.embeddings.create(model="text-embedding-3-small", input=["a", "b c"])
    assert len(emb.data) == 2 and all(len(d.embedding) == 8 for d in emb.data), emb
    summary["embeddings"] = len(emb.data)

    ids = sorted(m.id for m in client.models.list())
    want = sorted(os.environ["PALISADE_MODELS"].split(","))
    assert ids == want, (ids, want)
    summary["models"] = ids

    revoked = openai.OpenAI(base_url=base, api_key=os.environ["PALISADE_REVOKED_TOKEN"], max_retries=0)
    try:
        revoked.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}])
    except openai.AuthenticationError as e:
        assert e.status_code == 401, e
        assert e.code == "token_revoked", e.body
        summary["revoked"] = e.code
    else:
        raise AssertionError("a revoked token was accepted")

    try:
        client.chat.completions.create(model="not-served", messages=[{"role": "user", "content": "x"}])
    except openai.NotFoundError as e:
        assert e.code == "model_not_found", e.body
        summary["unknown_model"] = e.code
    else:
        raise AssertionError("an unserved model was accepted")

    print(json.dumps(summary))


if __name__ == "__main__":
    try:
        main()
    except Exception as exc:  # noqa: BLE001 - report any failure clearly
        print(f"sdk_check failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        sys.exit(1)
