"""Create a tiny Qwen2 model and tokenizer offline, for tests and the CPU quickstart.

Nothing is downloaded. The tokenizer is a byte-level BPE trained on a small synthetic
corpus (arithmetic, boxed answers, critique and refinement words) with *exactly* Qwen2's
normalizer and pre-tokenizer: transformers 5 loads any Qwen2 model's tokenizer as
``Qwen2Tokenizer``, which rebuilds that pipeline from the saved vocabulary, so a tokenizer
trained with a different pre-tokenizer would silently encode differently after reloading.
:func:`create_tiny_model` reloads what it saved and checks a probe string to be sure.

Two builds with the same arguments are byte-identical.
"""

from __future__ import annotations

import random
from pathlib import Path

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
QWEN2_PRETOKENIZE_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
PROBE = (
    "What is 37 + 48?\nThe answer is \\boxed{85}. Critique: incorrect, ground truth 7.<|im_end|>"
)


def _corpus(seed: int) -> list[str]:
    rng = random.Random(seed)
    words = [
        "What",
        "is",
        "the",
        "answer",
        "Please",
        "reason",
        "step",
        "by",
        "step",
        "and",
        "put",
        "your",
        "final",
        "answer",
        "within",
        "boxed",
        "The",
        "generated",
        "solution",
        "is",
        "correct",
        "incorrect",
        "ground",
        "truth",
        "Previous",
        "solution",
        "Critique",
        "Using",
        "the",
        "critique",
        "fix",
        "errors",
        "in",
        "previous",
        "system",
        "user",
        "assistant",
        "Let",
        "us",
        "compute",
        "first",
        "then",
        "so",
        "therefore",
        "wrong",
        "right",
        "sum",
        "difference",
        "product",
        "carry",
    ]
    lines = []
    for _ in range(3000):
        a, b = rng.randint(0, 999), rng.randint(0, 999)
        op = rng.choice("+-*")
        lines.append(
            f"What is {a} {op} {b}? {a} {op} {b} = {a + b}. The answer is \\boxed{{{a + b}}}."
        )
        lines.append(" ".join(rng.choice(words) for _ in range(12)))
    return lines


def build_tokenizer(vocab_size: int = 384, seed: int = 0):
    """A byte-level BPE ``PreTrainedTokenizerFast`` with ChatML template, pad and eos."""
    from tokenizers import (
        AddedToken,
        Regex,
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        trainers,
    )
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(seed), trainer=trainer)
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def create_tiny_model(
    path: str | Path,
    *,
    hidden_size: int = 128,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int = 256,
    max_position_embeddings: int = 1024,
    seed: int = 0,
) -> Path:
    """Write a randomly initialised tiny Qwen2 causal LM and its tokenizer to ``path``."""
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(seed=seed)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        intermediate_size=intermediate_size,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=True,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
        use_sliding_window=False,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2ForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)

    reloaded = AutoTokenizer.from_pretrained(path)
    if reloaded.encode(PROBE) != tokenizer.encode(PROBE):
        raise RuntimeError(
            f"tiny tokenizer at {path} encodes differently after reloading with AutoTokenizer; "
            "the pre-tokenizer no longer matches the model type's tokenizer class"
        )
    return path
