"""The four example shapes: detection, validation and the canonical form.

A line's shape is detected from its keys; a line that fits none raises
ExampleError saying what was expected. The canonical form (what is stored and
hashed) keeps only the fields that change training, so the same example
dropped twice, with other tags or key order, hashes the same. A `user:NAME`
tag makes an example that user's own (it trains that user's lineage), so the
same text taught by two users is two examples.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from .errors import ExampleError

SHAPES = {
    "io": ("input", "output"),
    "prompt": ("prompt", "completion"),
    "messages": ("messages",),
    "text": ("text",),
}
ROLES = ("system", "user", "assistant")
USER_RE = re.compile(r"[A-Za-z0-9_.@-]{1,64}")
EXPECTED = ('one of {"input", "output"}, {"prompt", "completion"}, '
            '{"messages": [{"role", "content"}, ...]} or {"text"}')


@dataclass
class Example:
    """A validated example: its shape, canonical fields, and content hash."""

    kind: str
    data: dict

    @cached_property
    def json(self) -> str:
        return json.dumps(self.data, ensure_ascii=False, sort_keys=True, separators=(",", ":"))

    @cached_property
    def user(self) -> str | None:
        """The user whose memory this is (its first `user:NAME` tag), or None: shared."""
        return user_of(self.data)

    @cached_property
    def hash(self) -> str:
        content = {k: v for k, v in self.data.items() if k != "tags"}
        if self.user is not None:
            content["user"] = self.user
        blob = json.dumps(content, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()


def _text(obj: dict, key: str) -> str:
    value = obj.get(key)
    if value is None:
        raise ExampleError(f"missing field '{key}'")
    if not isinstance(value, str):
        raise ExampleError(f"field '{key}' must be a string, got {type(value).__name__}")
    if not value.strip():
        raise ExampleError(f"field '{key}' is empty")
    return value


def parse_example(obj: Any) -> Example:
    """Validate one decoded JSON line and return its canonical Example."""
    if not isinstance(obj, dict):
        raise ExampleError(f"expected a JSON object, got {type(obj).__name__}; expected {EXPECTED}")
    kinds = [k for k, keys in SHAPES.items() if keys[0] in obj]
    if len(kinds) != 1:
        found = ", ".join(sorted(obj)) or "no keys"
        reason = "mixes several shapes" if kinds else "fits no shape"
        raise ExampleError(f"{reason} (keys: {found}); expected {EXPECTED}")
    kind = kinds[0]
    data: dict[str, Any] = {}
    if kind == "messages":
        data["messages"] = _messages(obj["messages"])
    else:
        for key in SHAPES[kind]:
            data[key] = _text(obj, key)
    if "system" in obj:
        if kind == "text":
            raise ExampleError("field 'system' does not apply to a {\"text\"} example")
        data["system"] = _text(obj, "system")
    if "tags" in obj:
        tags = obj["tags"]
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            raise ExampleError("field 'tags' must be a list of strings")
        users = [t[len("user:"):] for t in tags if t.startswith("user:")]
        if any(not USER_RE.fullmatch(u) for u in users):
            raise ExampleError("a 'user:NAME' tag needs a NAME of 1-64 of A-Z a-z 0-9 _ . @ -")
        if len(set(users)) > 1:
            raise ExampleError(f"field 'tags' names several users ({', '.join(users)}); an example "
                               "belongs to one user, or to everyone with no user: tag")
        data["tags"] = tags
    return Example(kind, data)


def _messages(messages: Any) -> list[dict]:
    if not isinstance(messages, list) or not messages:
        raise ExampleError("field 'messages' must be a non-empty list of {\"role\", \"content\"}")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise ExampleError(f"messages[{i}] must be an object with 'role' and 'content'")
        role = m.get("role")
        if role not in ROLES:
            raise ExampleError(f"messages[{i}].role must be one of {', '.join(ROLES)}, got {role!r}")
        content = m.get("content")
        if not isinstance(content, str) or not content.strip():
            raise ExampleError(f"messages[{i}].content must be a non-empty string")
        out.append({"role": role, "content": content})
    if not any(m["role"] == "assistant" for m in out):
        raise ExampleError("'messages' has no assistant turn to learn from")
    return out


def to_chat(data: dict) -> list[dict] | None:
    """The example as chat messages, or None for a plain {"text"} example.

    input/output and prompt/completion both become one user turn and one
    assistant turn, since memz answers questions through the chat template.
    """
    system = [{"role": "system", "content": data["system"]}] if "system" in data else []
    if "messages" in data:
        return system + data["messages"]
    if "input" in data:
        return system + [{"role": "user", "content": data["input"]},
                         {"role": "assistant", "content": data["output"]}]
    if "prompt" in data:
        return system + [{"role": "user", "content": data["prompt"]},
                         {"role": "assistant", "content": data["completion"]}]
    return None


def question_of(data: dict) -> str:
    """The last user turn before the final answer (for recall probes and routing keys)."""
    chat = to_chat(data)
    if chat is None:
        return data["text"]
    users = [m["content"] for m in chat if m["role"] == "user"]
    return users[-1] if users else ""


def answer_of(data: dict) -> str:
    chat = to_chat(data)
    if chat is None:
        return data["text"]
    return [m["content"] for m in chat if m["role"] == "assistant"][-1]


def user_of(data: dict) -> str | None:
    """The `user:NAME` tag's NAME of a canonical example, or None (shared)."""
    for tag in data.get("tags", ()):
        if tag.startswith("user:"):
            return tag[len("user:"):]
    return None
