"""Model lists across APIs: OpenAI model entries as Ollama's ``/api/tags`` and ``/api/ps``
cards (so every box's models merge in one list), cards as OpenAI's ``/v1/models``
entries, a minimal ``/api/show`` answer for a model no Ollama box has, and the box's own
id for a routing key.

A card's ``name`` is the model's name in ollamux (an alias when the config gives one);
its ``model`` is the box's own id, the one a request to that box must carry.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from ollamux.backends.translate.common import iso_from_unix, unix_from_iso
from ollamux.routing.state import BoxState, canonical_model

_QUANT = re.compile(r"(?i)(?:^|[-_.:])((?:IQ|Q)\d[A-Z0-9_]*|F16|F32|BF16)(?:\.gguf)?$")
_FAR = "2318-01-01T00:00:00Z"  # a model a llama-server keeps loaded has no expiry


def card(entry: Mapping[str, Any], ollama: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """An OpenAI model entry (with llama-server's Ollama-like twin, when it lists one) as
    an ``/api/tags`` card."""
    ident = str(entry["id"])
    meta = entry.get("meta")
    meta = meta if isinstance(meta, dict) else {}
    base = dict(ollama or {})
    details = dict(base.get("details") or {})
    details.setdefault("format", "gguf")
    details.setdefault("family", "")
    details.setdefault("parameter_size", _params(meta.get("n_params")))
    details.setdefault("quantization_level", _quant(ident))
    base.update(
        name=ident,
        model=ident,
        modified_at=base.get("modified_at") or iso_from_unix(entry.get("created")),
        size=int(base.get("size") or meta.get("size") or 0),
        digest=base.get("digest") or "",
        details=details,
    )
    return base


def running_card(tag: Mapping[str, Any]) -> dict[str, Any]:
    """The ``/api/ps`` entry for a loaded model, from its tags card."""
    return {**tag, "expires_at": _FAR, "size_vram": tag.get("size", 0)}


def openai_model(tag: Mapping[str, Any], owner: str) -> dict[str, Any]:
    name = str(tag["name"])
    namespace = name.split("/", 1)[0] if "/" in name else owner
    return {
        "id": name,
        "object": "model",
        "created": unix_from_iso(tag.get("modified_at")),
        "owned_by": namespace,
    }


def openai_models(boxes: Iterable[BoxState]) -> list[dict[str, Any]]:
    """Every model some box has listed, once, in OpenAI's shape (config order wins); a
    box that is down keeps its models here, as in /api/tags."""
    seen: set[str] = set()
    out = []
    for box in boxes:
        owner = "library" if box.kind == "ollama" else box.kind
        for tag in box.tags:
            key = canonical_model(tag["name"])
            if key not in seen:
                seen.add(key)
                out.append(openai_model(tag, owner))
    return out


def show(tag: Mapping[str, Any]) -> dict[str, Any]:
    """A minimal ``/api/show`` answer from a card, for a model only non-Ollama boxes serve."""
    return {
        "modelfile": f"# served by an OpenAI-compatible box as {tag.get('model')}\n",
        "parameters": "",
        "template": "",
        "details": tag.get("details") or {},
        "model_info": {},
        "capabilities": ["completion", "tools"],
        "modified_at": tag.get("modified_at"),
    }


def find_tag(box: BoxState, key: str) -> Mapping[str, Any] | None:
    return next((t for t in box.tags if canonical_model(t["name"]) == key), None)


def own_id(box: BoxState, key: str, asked: str) -> str:
    """The name a request for ``key`` must carry to ``box``: the client's own name unless
    the box lists the model under another id (an alias, or llama-server's exact id)."""
    tag = find_tag(box, key)
    own = tag.get("model") or tag["name"] if tag is not None else None
    if not isinstance(own, str) or own == asked:
        return asked
    if box.kind == "ollama" and canonical_model(own) == canonical_model(asked):
        return asked  # Ollama resolves name and name:latest itself
    return own


def _params(n: object) -> str:
    if isinstance(n, int | float) and not isinstance(n, bool) and n > 0:
        return f"{n / 1e9:.1f}B"
    return ""


def _quant(ident: str) -> str:
    match = _QUANT.search(ident)
    return match.group(1).upper() if match else ""
