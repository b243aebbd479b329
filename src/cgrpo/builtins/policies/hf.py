"""``hf``: sampling on the training model itself, with cgrpo's own decode loop.

The embedded default backend: no second copy of the weights, nothing to synchronise, and
the same code on CPU with a tiny model and on one GPU with a real one. Log-probabilities
are log softmax(logits / T) of each sampled token (no top-p/top-k renormalisation), the
same quantity the trainer recomputes, so the sampler's log-probs serve as the old
log-probs of the update.

Decoding (:mod:`.decode`) runs the model's forward against a transformers KV cache, one
token per row and step, and draws every row's token at once on the device
(:mod:`.token_draw`: inverse-transform sampling, one uniform per row, from torch's RNG or,
with seeds, from each sequence's own counter-based stream, :mod:`.seeded_sampling`).
Nothing of the model's ``generation_config`` applies (repetition penalty, minimum length,
...): the sampled distribution is the one the trainer computes. Only the current step's
(B, V) logits exist at a time; the tokens and log-probs go to preallocated (B, T) buffers.
Generation runs under the trainer's autocast (bf16 matmuls over float32 master weights,
each weight cast once per call).

On CUDA the decode step is compiled into CUDA graphs over a static cache
(``decode: compiled``, the default there; never on CPU), with the batch rounded up to a
power of two and the cache length to a multiple of 128 so that a run compiles few shapes.

``token_utilization`` (telemetry, ``policy/token_utilization`` in metrics.jsonl): real
tokens (prompt and sampled, up to each row's end) over the positions the model computed
(left padding, and rows that ended while others decode), since the previous report. When
a step needs several decode calls, sequences are grouped by prompt length first.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from cgrpo.builtins.policies.batching import RequestBatcher
from cgrpo.interfaces import collect_stream
from cgrpo.model.loading import eos_token_ids
from cgrpo.types import Completion, SamplingParams

log = logging.getLogger(__name__)


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int):
    """``(input_ids, attention_mask)`` (B, longest prompt) with prompts padded on the left,
    so that generated tokens line up at the right."""
    import torch

    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, p in enumerate(prompts):
        ids[i, width - len(p) :] = torch.tensor(list(p), dtype=torch.long)
        mask[i, width - len(p) :] = 1
    return ids, mask


def _without_autograd(model: Any):
    """``torch.inference_mode`` for decoding, where it is safe, else ``torch.no_grad``.

    Inference mode also skips autograd's version counters and view tracking, which
    ``no_grad`` keeps: 14% fewer CPU-seconds per ``generate`` of the tiny model (64 x 32
    tokens, 10 alternating runs), where each decode step is a few hundred small ops. The
    tensors made inside cannot be saved for backward, and nothing made here is: the
    buffers are copied to the CPU. An FSDP-sharded model decodes under ``no_grad``: with
    torch 2.13, FSDP2's forward fails under inference mode ("Inference tensors do not
    track version counter"; its unshard reads the counters), gathered or not."""
    import torch

    from cgrpo.model.sharding import is_sharded

    return torch.no_grad() if is_sharded(model) else torch.inference_mode()


def _round_up(n: int, to: int) -> int:
    return -(-n // to) * to


class HFPolicy:
    """Samples on the training model itself (no weight sync needed).

    Single requests (:meth:`sample`, the per-group rollout's interface) are gathered into
    batched decode calls by a :class:`~cgrpo.builtins.policies.batching.RequestBatcher`, which runs
    them in a worker thread; calls from several threads take turns (one lock)."""

    # the trainer gathers a sharded (FSDP) model whole around sampling (model/sharding.py)
    samples_with_trainer_model = True
    # a row's numbers depend on its batch (padding) and unseeded draws on the order of
    # calls: the rollout gives it the serial rollout's batches (train/gates.py LockStep)
    batches_continuously = False

    class Options(BaseModel):
        model_config = ConfigDict(extra="forbid")
        generation_batch_size: int = Field(
            64, ge=1, description="sequences decoded together (memory bound)"
        )
        decode: Literal["auto", "compiled", "eager"] = Field(
            "auto",
            description="'compiled': the decode step captured in CUDA graphs over a static "
            "KV cache (torch.compile mode reduce-overhead; each batch shape compiles once), "
            "CUDA only; 'eager': one forward per step over a growing cache; 'auto': "
            "compiled when the model is on CUDA and not FSDP-sharded, else eager",
        )

    def __init__(self, options: Options, context: Any):
        if context is None or context.model is None or context.tokenizer is None:
            raise ValueError("the hf policy backend needs the loaded model and tokenizer")
        self.options = options
        self.model = context.model
        self.tokenizer = context.tokenizer
        from cgrpo.model.precision import FULL

        self.precision = context.precision or FULL
        self.eos_ids = eos_token_ids(self.model.generation_config, self.tokenizer)
        self.pad_id = self.tokenizer.pad_token_id
        if self.pad_id is None:
            self.pad_id = self.eos_ids[0]
        self.weight_version = 0  # weight syncs received (set by the trainer on resume)
        self._lock = threading.Lock()
        self._batcher = RequestBatcher(self)
        self.compiled = self._compiled_decode(options.decode)
        self.stats = {"real": 0, "positions": 0}

    async def sample(
        self, prompt_ids: Sequence[int], params: SamplingParams, seed: int | None = None
    ) -> list[Completion]:
        """``params.n`` completions of one prompt, from a batched ``generate`` call shared
        with the requests made at the same time (seeded: the same tokens as ``generate``
        with ``seeds=[seed]`` in the same batch)."""
        return await self._batcher.sample(prompt_ids, params, seed)

    def _compiled_decode(self, setting: str) -> Any:
        """A :class:`.decode.CompiledDecode` where ``decode`` asks for one."""
        from cgrpo.builtins.policies.decode import CompiledDecode
        from cgrpo.model.sharding import is_sharded

        cuda = next(self.model.parameters()).device.type == "cuda"
        if setting == "compiled" and not cuda:
            raise ValueError(
                "policy.options.decode: 'compiled' needs the model on CUDA; set it to eager or auto"
            )
        if setting == "eager" or (setting == "auto" and (not cuda or is_sharded(self.model))):
            return None
        return CompiledDecode(self.model)

    def generate(
        self,
        prompts: Sequence[Sequence[int]],
        params: SamplingParams,
        seeds: Sequence[int] | None = None,
    ) -> list[list[Completion]]:
        """``params.n`` completions per prompt, in prompt order.

        With ``seeds``, sample j of prompt p draws from its own random stream, a function
        of (seeds[p], j) alone (:mod:`.seeded_sampling`): the same tokens whatever the
        batching, and torch's global RNG is left alone. When the sequences need several
        ``generate`` calls, they are grouped by prompt length, so that short prompts are
        not padded to the longest one of the step (refinement prompts vary widely)."""
        return collect_stream(self.generate_stream(prompts, params, seeds), len(prompts))

    def generate_stream(
        self,
        prompts: Sequence[Sequence[int]],
        params: SamplingParams,
        seeds: Sequence[int] | None = None,
    ) -> Iterator[list[tuple[int, list[Completion]]]]:
        """What :meth:`generate` returns, given as it is made: after each ``generate``
        call, the (prompt index, completions) of the prompts it finished, so that the
        trainer verifies and critiques them while the next call runs."""
        if seeds is not None and len(seeds) != len(prompts):
            raise ValueError(f"got {len(seeds)} seeds for {len(prompts)} prompts")
        n = params.n
        flat = [list(p) for p in prompts for _ in range(n)]
        row_seeds = None
        if seeds is not None and not params.greedy:
            from cgrpo.builtins.policies.seeded_sampling import row_seeds as make_row_seeds

            row_seeds = make_row_seeds(seeds, n)
        step = self.options.generation_batch_size
        order = list(range(len(flat)))
        if len(flat) > step:  # several calls: each of similar lengths
            order.sort(key=lambda i: len(flat[i]))
        out: list[Completion | None] = [None] * len(flat)
        missing = [n] * len(prompts)  # completions each prompt still waits for
        for start in range(0, len(order), step):
            chunk = order[start : start + step]
            done = self._generate_batch(
                [flat[i] for i in chunk],
                params,
                None if row_seeds is None else row_seeds[chunk],
            )
            finished = []
            for i, completion in zip(chunk, done, strict=True):
                out[i] = completion
                missing[i // n] -= 1
                if missing[i // n] == 0:
                    finished.append(i // n)
            yield [(p, out[p * n : (p + 1) * n]) for p in sorted(finished)]  # type: ignore[misc]

    def _generate_batch(
        self, prompts: list[list[int]], params: SamplingParams, seeds: Any = None
    ) -> list[Completion]:
        """One decode call; ``seeds`` (B,) int64 row seeds make it a seeded draw."""
        from cgrpo.builtins.policies.token_draw import TokenDraw

        device = next(self.model.parameters()).device
        sample = not params.greedy
        draw = TokenDraw(
            params.temperature,
            params.top_p,
            params.top_k,
            seeds=None if seeds is None or not sample else seeds.to(device),
            greedy=not sample,
        )
        with self._lock:  # the rollout's worker thread and a critic on the main thread
            was_training = self.model.training
            self.model.eval()
            try:
                with _without_autograd(self.model), self.precision.autocast():
                    out = self._decode(prompts, params.max_new_tokens, draw)
            finally:
                self.model.train(was_training)
            self.stats["real"] += out.real
            self.stats["positions"] += out.positions
        return self._completions(out)

    def _decode(self, prompts: list[list[int]], max_new_tokens: int, draw: Any) -> Any:
        """Decode eagerly, or with the compiled step on a batch padded to a power of two
        (copies of the first row, dropped afterwards) and a cache rounded to 128."""
        from cgrpo.builtins.policies.decode import decode

        rows = len(prompts)
        # asking the device whether all rows ended costs a sync on CUDA, nothing on CPU
        check_every = 16 if next(self.model.parameters()).device.type == "cuda" else 1
        if self.compiled is None:
            ids, mask = left_pad(prompts, self.pad_id)
            return decode(
                self.model, ids, mask, max_new_tokens, draw, self.eos_ids, self.pad_id,
                check_every=check_every,
            )  # fmt: skip
        padded = 1 << (rows - 1).bit_length()
        ids, mask = left_pad(prompts + [prompts[0]] * (padded - rows), self.pad_id)
        seeds = draw.seeds
        if seeds is not None:
            draw.seeds = seeds[[*range(rows), *[0] * (padded - rows)]]
        length = _round_up(ids.shape[1] + max_new_tokens, 128)
        try:
            out = decode(
                self.model, ids, mask, max_new_tokens, draw, self.eos_ids, self.pad_id,
                cache=self.compiled.cache(padded, length), step=self.compiled.step,
                check_every=check_every,
            )  # fmt: skip
        except Exception as exc:
            if self.options.decode == "compiled":
                raise
            log.warning("compiled decode failed (%s); decoding eagerly from now on", exc)
            self.compiled, draw.seeds = None, seeds
            return self._decode(prompts, max_new_tokens, draw)
        return out.first(rows)

    def _completions(self, out: Any) -> list[Completion]:
        completions = []
        rows = zip(out.tokens, out.logprobs, out.lengths.tolist(), out.ended.tolist(), strict=True)
        for row, lp, n, stop in rows:
            tokens = row[:n].tolist()
            completions.append(
                Completion(
                    token_ids=tokens,
                    logprobs=lp[:n],
                    text=self.tokenizer.decode(tokens, skip_special_tokens=True),
                    finish_reason="stop" if stop else "length",
                    weight_version=self.weight_version,
                )
            )
        return completions

    def telemetry(self) -> dict[str, float]:
        """``token_utilization`` since the previous call: real tokens over the positions
        the model computed while decoding."""
        real, positions = self.stats["real"], self.stats["positions"]
        self.stats = {"real": 0, "positions": 0}
        return {"token_utilization": real / positions} if positions else {}

    def sync_weights(self, model: Any) -> None:
        """Nothing to copy: this backend samples with the training model itself. Counts
        the version its completions carry."""
        self.weight_version += 1

    def close(self) -> None:
        self.model = None
