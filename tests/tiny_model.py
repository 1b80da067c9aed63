"""Tiny random-initialised models for tests: a byte-level BPE tokenizer trained on a few
sentences (with a ChatML template) and a 2-block Llama/Qwen2 built with transformers.
Both backends load the directory, so tests train in seconds."""
from __future__ import annotations

import json
from pathlib import Path

CHATML = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] "
          "+ '<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")

CORPUS = [
    "Le salarié a droit à un congé payé. L'article L3141-1 du code du travail le prévoit.",
    "The Normans were the people who in the 10th and 11th centuries gave their name to Normandy.",
    "Question: Who ruled the duchy? Context: The duke ruled the duchy of Normandy. Answer: the duke",
    "Das Bundesgericht hat entschieden, dass die Beschwerde abzuweisen ist.",
    "Il tribunale federale ha respinto il ricorso. Regeste: ricorso respinto.",
    "Toute personne a le droit de demander communication des documents administratifs.",
    "system user assistant You are a helpful assistant. unanswerable",
] * 4


def build_tokenizer(out: Path, vocab_size: int = 384):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(CORPUS, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", bos_token="<|im_start|>",
                                   pad_token="<|endoftext|>", unk_token="<|endoftext|>")
    fast.chat_template = CHATML
    fast.save_pretrained(str(out))
    return fast


def build_tiny_model(out: Path, arch: str = "llama", seed: int = 0, tie: bool = False,
                     rope_theta: float = 500000.0, layers: int = 2) -> Path:
    """Write a tiny random model + tokenizer into `out` (transformers' own save format)."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer(out)
    common = dict(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                  tie_word_embeddings=tie, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                  pad_token_id=tok.pad_token_id, rms_norm_eps=1e-6)
    cfg = (LlamaConfig if arch == "llama" else Qwen2Config)(**common)
    cfg.rope_parameters = {"rope_type": "default", "rope_theta": rope_theta}
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    # Larger than default init, so the random model's logits are not all flat.
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.08)
    model.save_pretrained(str(out), safe_serialization=True)
    return out


def read_config(path: Path) -> dict:
    return json.loads((Path(path) / "config.json").read_text())
