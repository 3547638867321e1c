"""Drives Cairn's OpenAI-compatible facade with the official `openai` package.

Usage: openai_client.py BASE_URL TOKEN
Prints one JSON object with what each call returned; the Rust test asserts on it.
"""

import json
import sys

import openai

base, token = sys.argv[1], sys.argv[2]
client = openai.OpenAI(base_url=base + "/v1", api_key=token, max_retries=0, timeout=30)
out = {}

out["models"] = [m.id for m in client.models.list().data]

# Non-streaming, no continuity: the messages array is the context.
r = client.chat.completions.create(
    model="cairn",
    messages=[
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "first question"},
        {"role": "assistant", "content": "first answer"},
        {"role": "user", "content": "second question"},
    ],
)
extra = r.model_extra or {}
out["plain"] = {
    "object": r.object,
    "content": r.choices[0].message.content,
    "role": r.choices[0].message.role,
    "finish_reason": r.choices[0].finish_reason,
    "prompt_tokens": r.usage.prompt_tokens,
    "completion_tokens": r.usage.completion_tokens,
    "total_tokens": r.usage.total_tokens,
    "cairn": extra.get("cairn"),
}

# Continuity through X-Cairn-Conversation: only the new message is sent.
raw = client.chat.completions.with_raw_response.create(
    model="cairn", messages=[{"role": "user", "content": "remember one"}]
)
conv = raw.headers.get("x-cairn-conversation")
client.chat.completions.create(
    model="cairn",
    messages=[{"role": "user", "content": "remember two"}],
    extra_headers={"X-Cairn-Conversation": conv},
)
r = client.chat.completions.create(
    model="cairn",
    messages=[{"role": "user", "content": "what did I say?"}],
    extra_headers={"X-Cairn-Conversation": conv},
)
out["header"] = {"conversation": conv, "content": r.choices[0].message.content}

# Continuity through the `user` field.
for text in ["user one", "user two"]:
    r = client.chat.completions.create(
        model="cairn", messages=[{"role": "user", "content": text}], user="end-user-7"
    )
out["user_field"] = {
    "content": r.choices[0].message.content,
    "conversation": (r.model_extra or {}).get("cairn", {}).get("conversation_id"),
}

# Streaming with usage.
stream = client.chat.completions.create(
    model="cairn",
    messages=[{"role": "user", "content": "stream this please"}],
    stream=True,
    stream_options={"include_usage": True},
)
pieces, finish, usage, chunks, cairn_ext = [], None, None, 0, None
for chunk in stream:
    chunks += 1
    if chunk.usage is not None:
        usage = chunk.usage.total_tokens
    if chunk.choices:
        d = chunk.choices[0].delta
        if d.content:
            pieces.append(d.content)
        if chunk.choices[0].finish_reason:
            finish = chunk.choices[0].finish_reason
            cairn_ext = (chunk.model_extra or {}).get("cairn")
out["stream"] = {
    "text": "".join(pieces),
    "pieces": len(pieces),
    "finish_reason": finish,
    "total_tokens": usage,
    "chunks": chunks,
    "cairn": cairn_ext,
}

# Errors arrive as the SDK's own exception classes.
errors = {}
try:
    client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "x"}])
except openai.NotFoundError as e:
    errors["unknown_model"] = {"status": e.status_code, "code": e.code, "message": e.message}
try:
    client.chat.completions.create(
        model="cairn",
        messages=[{"role": "user", "content": "x"}],
        tools=[{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
    )
except openai.BadRequestError as e:
    errors["client_tools"] = {"status": e.status_code, "code": e.code}
try:
    client.chat.completions.create(model="cairn", messages=[{"role": "assistant", "content": "x"}])
except openai.BadRequestError as e:
    errors["last_not_user"] = {"status": e.status_code, "code": e.code}
bad = openai.OpenAI(base_url=base + "/v1", api_key="not-a-token", max_retries=0)
try:
    bad.models.list()
except openai.AuthenticationError as e:
    errors["bad_token"] = {"status": e.status_code, "code": e.code}
out["errors"] = errors
print(json.dumps(out))
