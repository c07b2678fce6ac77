"""A tiny random-weight llama model in GGUF, for real ``llama-server`` processes in tests.

About half a megabyte, loads in well under a second and decodes thousands of tokens a
second on a CPU. A SentencePiece-style vocabulary (``▁``-prefixed syllables, the 256 byte
tokens, ChatML's ``<|im_start|>``/``<|im_end|>``) and a ChatML chat template, so
``/v1/chat/completions`` works as with a real instruct model. Only the syllables have
output weights: the others' logits are 0 while a syllable's are large, so with the
server's default sampling (top-k 40) the text is made of syllables — never stray bytes
that are not UTF-8 — and never an end-of-generation token, so a request runs until its
token limit. Deterministic: the same arguments write the same bytes.

``python -m tests.realbox.tiny_gguf PATH`` writes one; ``cached_model()`` writes it once
under ``~/.cache/ollamux/models/`` (named by a hash of its content) and returns the path.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np

CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
CONSONANTS = "bdfgklmnprstvz"
VOWELS = "aeiou"


@dataclass(frozen=True)
class Shape:
    n_embd: int = 64
    n_head: int = 4
    n_head_kv: int = 2
    n_layer: int = 2
    n_ff: int = 128
    n_ctx: int = 32768
    seed: int = 20241


def vocab() -> tuple[list[str], list[float], list[int], int]:
    """(tokens, scores, types, number of leading non-syllable tokens)."""
    T = gguf.TokenType
    tokens = ["<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"]
    types = [T.UNKNOWN, T.CONTROL, T.CONTROL, T.CONTROL, T.CONTROL]
    tokens += [f"<0x{b:02X}>" for b in range(256)]
    types += [T.BYTE] * 256
    special = len(tokens)
    syllables = [c + v for c in CONSONANTS for v in VOWELS]
    pieces = ["▁", *VOWELS, *CONSONANTS, *syllables]
    pieces += ["▁" + s for s in syllables]
    pieces += ["▁" + a + b for a in syllables[:12] for b in syllables[:12]]
    tokens += pieces
    types += [T.NORMAL] * len(pieces)
    # SentencePiece merges pieces with the higher score first: longer pieces win.
    scores = [0.0] * special + [float(len(p)) - i * 1e-4 for i, p in enumerate(pieces)]
    return tokens, scores, [int(t) for t in types], special


def write(path: Path, shape: Shape = Shape()) -> None:
    tokens, scores, types, special = vocab()
    rng = np.random.default_rng(shape.seed)
    head_dim = shape.n_embd // shape.n_head

    def weights(*dims: int, scale: float = 0.05) -> np.ndarray:
        return (rng.standard_normal(dims) * scale).astype(np.float32)

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("ollamux-tiny-random")
    writer.add_context_length(shape.n_ctx)
    writer.add_embedding_length(shape.n_embd)
    writer.add_block_count(shape.n_layer)
    writer.add_feed_forward_length(shape.n_ff)
    writer.add_head_count(shape.n_head)
    writer.add_head_count_kv(shape.n_head_kv)
    writer.add_rope_dimension_count(head_dim)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(len(tokens))
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_unk_token_id(0)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(4)  # <|im_end|>, as in ChatML models
    writer.add_add_bos_token(False)
    writer.add_chat_template(CHATML)

    n_vocab = len(tokens)
    writer.add_tensor("token_embd.weight", weights(n_vocab, shape.n_embd, scale=1.0))
    for i in range(shape.n_layer):
        blk = f"blk.{i}"
        writer.add_tensor(f"{blk}.attn_norm.weight", np.ones(shape.n_embd, np.float32))
        writer.add_tensor(f"{blk}.attn_q.weight", weights(shape.n_embd, shape.n_embd))
        kv = shape.n_head_kv * head_dim
        writer.add_tensor(f"{blk}.attn_k.weight", weights(kv, shape.n_embd))
        writer.add_tensor(f"{blk}.attn_v.weight", weights(kv, shape.n_embd))
        writer.add_tensor(f"{blk}.attn_output.weight", weights(shape.n_embd, shape.n_embd))
        writer.add_tensor(f"{blk}.ffn_norm.weight", np.ones(shape.n_embd, np.float32))
        writer.add_tensor(f"{blk}.ffn_gate.weight", weights(shape.n_ff, shape.n_embd))
        writer.add_tensor(f"{blk}.ffn_up.weight", weights(shape.n_ff, shape.n_embd))
        writer.add_tensor(f"{blk}.ffn_down.weight", weights(shape.n_embd, shape.n_ff))
    writer.add_tensor("output_norm.weight", np.ones(shape.n_embd, np.float32))
    output = weights(n_vocab, shape.n_embd, scale=1.0)
    output[:special] = 0.0  # never a control or byte token (see the module docstring)
    writer.add_tensor("output.weight", output)

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def cached_model(name: str = "tiny", cache: Path | None = None) -> Path:
    """Write the model once per content; return its path (``<cache>/<name>-<hash>.gguf``)."""
    cache = cache or Path(os.environ.get("OLLAMUX_CACHE", Path.home() / ".cache/ollamux"))
    folder = cache / "models"
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        fresh = Path(tmp) / "model.gguf"
        write(fresh)
        digest = hashlib.sha256(fresh.read_bytes()).hexdigest()[:16]
        path = folder / f"{name}-{digest}.gguf"
        if not path.exists():
            fresh.replace(path)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", nargs="?", help="where to write it (default: the cache)")
    args = parser.parse_args()
    if args.path:
        write(Path(args.path))
        print(args.path)
    else:
        print(cached_model())


if __name__ == "__main__":
    main()
