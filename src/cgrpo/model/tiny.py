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

import os
import random
import shutil
import tempfile
from pathlib import Path

from cgrpo.errors import TrainingError

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
    """Write a randomly initialised tiny Qwen2 causal LM and its tokenizer to ``path``,
    atomically: into a temporary directory beside it, renamed to ``path`` only when
    complete, so a process killed meanwhile leaves no half-written model that looks like
    one (config.json without weights). When another process created ``path`` first, its
    model is kept (two builds with the same arguments are byte-identical)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_abandoned(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.creating-{os.getpid()}-", dir=path.parent))
    try:
        _write_tiny_model(
            tmp, hidden_size=hidden_size, num_layers=num_layers, num_heads=num_heads,
            num_kv_heads=num_kv_heads, intermediate_size=intermediate_size,
            max_position_embeddings=max_position_embeddings, seed=seed,
        )  # fmt: skip
        _publish(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # gone when published
    return path


def _remove_abandoned(path: Path) -> None:
    """Temporary directories of creations whose process is gone (killed mid-way)."""
    for old in path.parent.glob(f".{path.name}.creating-*"):
        pid = old.name.removeprefix(f".{path.name}.creating-").partition("-")[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(old, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _publish(tmp: Path, path: Path) -> None:
    """fsync ``tmp``'s files and rename it to ``path`` (replacing an empty directory)."""
    for file in tmp.iterdir():
        with open(file, "rb") as fh:
            os.fsync(fh.fileno())
    try:
        os.rename(tmp, path)
    except OSError:  # not empty: another process created it first, or something else is there
        if not (path / "config.json").is_file():
            raise TrainingError(
                f"{path} exists and holds no model; remove it, or point model.path elsewhere"
            ) from None


def _write_tiny_model(path: Path, *, hidden_size: int, num_layers: int, num_heads: int,
                      num_kv_heads: int, intermediate_size: int,
                      max_position_embeddings: int, seed: int) -> None:  # fmt: skip
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    from cgrpo.model.faults import maybe_crash

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
    maybe_crash("create", 0)  # the crash-safety tests: killed with config.json written
    tokenizer.save_pretrained(path)

    reloaded = AutoTokenizer.from_pretrained(path)
    if reloaded.encode(PROBE) != tokenizer.encode(PROBE):
        raise RuntimeError(
            f"tiny tokenizer at {path} encodes differently after reloading with AutoTokenizer; "
            "the pre-tokenizer no longer matches the model type's tokenizer class"
        )
