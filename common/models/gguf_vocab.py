"""A SentencePiece tokenizer.model rebuilt from a GGUF's vocabulary (llama.cpp's "llama" tokenizer).

llama.cpp's converter writes tokenizer.model's pieces, scores and piece types unchanged (GGUF's
token types are SentencePiece's numbering), so the proto is recoverable: BPE with byte fallback, no
dummy prefix, whitespace kept (what add_space_prefix false means). `export-gguf` of a Gemma needs
this file; it is checked there against the model's tokenizer.json on a probe text.
"""
from __future__ import annotations

from pathlib import Path

from common.errors import ModelError
from common.runs.io import write_bytes


def _field(reader, key: str):
    import gguf
    f = reader.fields.get(key)
    if f is None:
        return None
    if f.types[0] == gguf.GGUFValueType.ARRAY:
        if f.types[1] == gguf.GGUFValueType.STRING:
            return [bytes(f.parts[i]).decode("utf-8") for i in f.data]
        return [f.parts[i][0].item() for i in f.data]
    if f.types[0] == gguf.GGUFValueType.STRING:
        return bytes(f.parts[f.data[0]]).decode("utf-8")
    return f.parts[f.data[0]][0].item()


def write_spm_model(gguf_file: Path, out: Path) -> None:
    """Write `out` (tokenizer.model) from the SentencePiece vocabulary stored in `gguf_file`."""
    import gguf
    from sentencepiece import sentencepiece_model_pb2 as pb

    reader = gguf.GGUFReader(str(gguf_file))
    if _field(reader, "tokenizer.ggml.model") != "llama":
        raise ModelError("the GGUF's tokenizer is not SentencePiece (tokenizer.ggml.model is not llama)",
                         where=str(gguf_file))
    tokens, scores = _field(reader, "tokenizer.ggml.tokens"), _field(reader, "tokenizer.ggml.scores")
    types = _field(reader, "tokenizer.ggml.token_type")
    proto = pb.ModelProto()
    t = proto.trainer_spec
    t.model_type = pb.TrainerSpec.BPE
    t.vocab_size = len(tokens)
    t.byte_fallback = True
    t.split_digits = True
    for name, key in (("unk_id", "unknown"), ("bos_id", "bos"), ("eos_id", "eos"), ("pad_id", "padding")):
        value = _field(reader, f"tokenizer.ggml.{key}_token_id")
        setattr(t, name, -1 if value is None else int(value))
    n = proto.normalizer_spec
    n.name = "identity"
    n.add_dummy_prefix = bool(_field(reader, "tokenizer.ggml.add_space_prefix") or False)
    n.remove_extra_whitespaces = False
    n.escape_whitespaces = True
    for i, (piece, score, kind) in enumerate(zip(tokens, scores, types)):
        p = proto.pieces.add()
        # llama.cpp types the tokenizer's added special tokens CONTROL, <unk> included;
        # SentencePiece needs its unk piece typed UNKNOWN
        p.piece, p.score, p.type = piece, float(score), 2 if i == t.unk_id else int(kind)
    write_bytes(out, proto.SerializeToString())
