"""``hf``: sampling with transformers ``generate`` on the training model itself.

The embedded default backend: no second copy of the weights, nothing to synchronise, and
the same code on CPU with a tiny model and on one GPU with a real one. Log-probabilities
are taken from the raw logits of each generation step divided by the temperature (no
top-p/top-k renormalisation), the same quantity the trainer recomputes, so the sampler's
log-probs serve as the old log-probs of the update.

Memory: a logits processor records the sampled token's log-prob step by step (it sees
step t's logits, and step t's token when it is called at step t+1), so only one step's
(B, V) scores are alive at a time; asking ``generate`` for every step's logits would hold
B x T x V floats (220 GiB at 64 x 6,144 x 151,936). Generation runs under the trainer's
autocast (bf16 matmuls over float32 master weights, each weight cast once per call).
Sampling settings the model's own ``generation_config`` may carry (repetition penalty,
minimum length, ...) are neutralised: they would sample from a distribution the trainer
does not compute.

``generate`` decodes greedily and the last logits processor makes the draw: one uniform per
row with torch's RNG (:mod:`.token_draw`, inverse-transform sampling, where transformers'
multinomial draws a random number per vocabulary entry), or, with seeds, each row's own
stream. Seeded sampling (``run.reproducible_sampling``) draws each sequence from its own
counter-based random stream (:mod:`.seeded_sampling`), so it stays one batched call and
leaves torch's global RNG alone. When a step needs several calls, the sequences are grouped
by prompt length first.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from cgrpo.builtins.policies.batching import RequestBatcher
from cgrpo.interfaces import collect_stream
from cgrpo.model.loading import eos_token_ids
from cgrpo.types import Completion, SamplingParams

# generation_config entries that would change the sampled distribution away from
# softmax(logits / T) with top-p/top-k; a model's shipped config may set them
_NEUTRAL_GENERATION = dict(
    repetition_penalty=1.0,
    no_repeat_ngram_size=0,
    min_new_tokens=0,
    bad_words_ids=None,
    suppress_tokens=None,
    begin_suppress_tokens=None,
    sequence_bias=None,
    forced_bos_token_id=None,
    forced_eos_token_id=None,
    exponential_decay_length_penalty=None,
    renormalize_logits=False,
    min_p=None,
    typical_p=1.0,
    epsilon_cutoff=0.0,
    eta_cutoff=0.0,
)


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


class SampledLogprobRecorder:
    """A transformers logits processor that records log softmax(logits / T) of each
    sampled token without keeping all steps' logits.

    ``generate`` calls it once per step with the sequences so far and that step's raw
    scores (float32, before the sampling warpers); the token chosen at step t is the
    last column of ``input_ids`` at step t+1. :meth:`finish` takes the last step's.
    """

    def __init__(self, temperature: float):
        self.temperature = temperature
        self.pending = None  # log-softmax of the previous step, (B, V)
        self.columns: list = []  # per step, (B,) log-probs of the sampled tokens

    def _take(self, tokens) -> None:
        if self.pending is not None:
            self.columns.append(self.pending.gather(-1, tokens.unsqueeze(-1)).squeeze(-1))
            self.pending = None

    def __call__(self, input_ids, scores):
        import torch

        self._take(input_ids[:, -1])  # the token sampled from the previous step's scores
        self.pending = torch.log_softmax(scores.float() / self.temperature, dim=-1)
        return scores

    def finish(self, new_tokens):
        """(B, T) log-probs of ``new_tokens`` (B, T), the generated part of the sequences."""
        import torch

        if new_tokens.shape[1] > len(self.columns):
            self._take(new_tokens[:, len(self.columns)].to(self.pending.device))
        if not self.columns:
            return torch.zeros(new_tokens.shape, dtype=torch.float32)
        return torch.stack(self.columns, dim=1).cpu()


def _without_autograd(model: Any):
    """``torch.inference_mode`` for decoding, where it is safe, else ``torch.no_grad``.

    Inference mode also skips autograd's version counters and view tracking, which
    ``no_grad`` keeps: 14% fewer CPU-seconds per ``generate`` of the tiny model (64 x 32
    tokens, 10 alternating runs), where each decode step is a few hundred small ops. The
    tensors made inside cannot be saved for backward, and nothing made here is: the token
    ids become lists, and the log-probs are stacked into a new tensor afterwards. An
    FSDP-sharded model decodes under ``no_grad``: with torch 2.13, FSDP2's forward fails
    under inference mode ("Inference tensors do not track version counter"; its unshard
    reads the counters), gathered or not."""
    import torch

    from cgrpo.model.sharding import is_sharded

    return torch.no_grad() if is_sharded(model) else torch.inference_mode()


class HFPolicy:
    """Samples with transformers generate on the training model (no weight sync needed).

    Single requests (:meth:`sample`, the per-group rollout's interface) are gathered into
    batched calls by a :class:`~cgrpo.builtins.policies.batching.RequestBatcher`, which runs
    them in a worker thread; calls from several threads take turns (one lock)."""

    # the trainer gathers a sharded (FSDP) model whole around sampling (model/sharding.py)
    samples_with_trainer_model = True
    # a row's numbers depend on its batch (padding) and unseeded draws on the order of
    # calls: the rollout gives it the serial rollout's batches (train/gates.py LockStep)
    batches_continuously = False

    class Options(BaseModel):
        model_config = ConfigDict(extra="forbid")
        generation_batch_size: int = Field(
            64, ge=1, description="sequences generated per generate() call (memory bound)"
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

    async def sample(
        self, prompt_ids: Sequence[int], params: SamplingParams, seed: int | None = None
    ) -> list[Completion]:
        """``params.n`` completions of one prompt, from a batched ``generate`` call shared
        with the requests made at the same time (seeded: the same tokens as ``generate``
        with ``seeds=[seed]`` in the same batch)."""
        return await self._batcher.sample(prompt_ids, params, seed)

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
        """One ``generate`` call; ``seeds`` (B,) int64 row seeds make it a seeded draw:
        greedy decoding of the warped scores plus each row's Gumbel noise."""
        import torch
        from transformers import LogitsProcessorList

        from cgrpo.builtins.policies.seeded_sampling import SeededSampler
        from cgrpo.builtins.policies.token_draw import InverseCdfSampler

        device = next(self.model.parameters()).device
        ids, mask = left_pad(prompts, self.pad_id)
        width = ids.shape[1]
        sample = not params.greedy
        recorder = SampledLogprobRecorder(params.temperature if sample else 1.0)
        processors: list[Any] = [recorder]
        # the draw happens in the last processor; generate itself decodes greedily
        if sample and seeds is not None:
            processors.append(
                SeededSampler(seeds.to(device), params.temperature, params.top_p, params.top_k)
            )
        elif sample:
            processors.append(InverseCdfSampler(params.temperature, params.top_p, params.top_k))
        kwargs: dict[str, Any] = dict(
            _NEUTRAL_GENERATION,
            max_new_tokens=params.max_new_tokens,
            do_sample=False,
            # sampling-only settings a model's generation_config may carry would warn
            temperature=None,
            top_p=None,
            top_k=None,
            pad_token_id=self.pad_id,
            eos_token_id=self.eos_ids,
            logits_processor=LogitsProcessorList(processors),
            return_dict_in_generate=True,
            # transformers turns this on for FSDP models; the trainer gathers a sharded
            # model before sampling, so each rank decodes alone (no per-token all-reduce)
            synced_gpus=False,
        )
        with self._lock:  # the rollout's worker thread and a critic on the main thread
            was_training = self.model.training
            self.model.eval()
            try:
                with _without_autograd(self.model), self.precision.autocast():
                    result = self.model.generate(
                        input_ids=ids.to(device), attention_mask=mask.to(device), **kwargs
                    )
            finally:
                self.model.train(was_training)
        logprobs = recorder.finish(result.sequences[:, width:]).float().cpu()
        new = result.sequences[:, width:].cpu()
        # each row's length up to its first EOS (kept), found with tensor ops, not a
        # Python scan over every token
        is_eos = torch.isin(new, torch.tensor(self.eos_ids, dtype=new.dtype))
        ended = is_eos.any(dim=1)
        lengths = torch.where(ended, is_eos.int().argmax(dim=1) + 1, new.shape[1])
        completions = []
        for row, lp, n, stop in zip(new, logprobs, lengths.tolist(), ended.tolist(), strict=True):
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

    def sync_weights(self, model: Any) -> None:
        """Nothing to copy: this backend samples with the training model itself. Counts
        the version its completions carry."""
        self.weight_version += 1

    def close(self) -> None:
        self.model = None
