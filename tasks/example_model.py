"""A tiny random Llama with a locally trained tokenizer: a real model vLLM can serve, made
without touching a hub. Its outputs are noise; its shapes and files are the real thing."""

from __future__ import annotations

import json
from pathlib import Path

from tasks.errors import BadInput

# vLLM's CPU attention rejects head_dim 16; hidden 128 with 2 heads (head_dim 64) works.
TINY_LLAMA = dict(
    hidden_size=128,
    intermediate_size=256,
    num_hidden_layers=2,
    num_attention_heads=2,
    num_key_value_heads=2,
    max_position_embeddings=2048,
    vocab_size=512,
)

_CORPUS = """\
llmship takes a large language model from a registry to production serving.
It resolves the model at a pinned revision, plans memory against the GPU, quantizes it,
builds an engine, publishes the artifacts, rolls them out, warms them up, load tests them
and promotes them by canary with metric gates, rolling back when a gate fails.
The quick brown fox jumps over the lazy dog. Pack my box with five dozen liquor jugs.
Serving engines batch requests continuously; the key value cache holds attention state.
Time to first token, time per output token and inter-token latency measure a server.
"""


def _train_tokenizer(vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<unk>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    # Repeat the corpus so every byte-level merge has support.
    tok.train_from_iterator([_CORPUS] * 50, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="</s>"
    )


def write_example_model(out_dir: str | Path, seed: int = 0, **overrides) -> Path:
    """Write a tiny random LlamaForCausalLM (safetensors) and its tokenizer into out_dir."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise BadInput("example-model", str(out), "folder is not empty", "give a new or empty folder")
    out.mkdir(parents=True, exist_ok=True)

    shape = {**TINY_LLAMA, **overrides}
    tokenizer = _train_tokenizer(shape["vocab_size"])
    shape["vocab_size"] = len(tokenizer)
    config = LlamaConfig(
        **shape,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        torch_dtype="float32",
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config.do_sample = False
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    # A plain chat template so /v1/chat/completions works on the example model.
    tok_cfg_path = out / "tokenizer_config.json"
    tok_cfg = json.loads(tok_cfg_path.read_text())
    tok_cfg["chat_template"] = (
        "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}assistant: {% endif %}"
    )
    tok_cfg_path.write_text(json.dumps(tok_cfg, indent=2))
    return out
