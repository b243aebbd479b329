"""``hf``: sampling with transformers ``generate`` on the training model itself.

The embedded default backend: no second copy of the weights, nothing to synchronise, and
the same code on CPU with a tiny model and on one GPU with a real one. Log-probabilities
are taken from the raw logits of each generation step divided by the temperature (no
top-p/top-k renormalisation), the same quantity the trainer recomputes, so the sampler's
log-probs serve as the old log-probs of the update.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from cgrpo.train.model import eos_token_ids
from cgrpo.types import Completion, SamplingParams


class HFPolicy:
    """Samples with transformers generate on the training model (no weight sync needed)."""

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
        self.eos_ids = eos_token_ids(self.model.generation_config, self.tokenizer)
        self.pad_id = self.tokenizer.pad_token_id
        if self.pad_id is None:
            self.pad_id = self.eos_ids[0]

    def generate(
        self,
        prompts: Sequence[Sequence[int]],
        params: SamplingParams,
        seeds: Sequence[int] | None = None,
    ) -> list[list[Completion]]:
        """``params.n`` completions per prompt, in prompt order.

        With ``seeds``, each prompt is generated on its own with torch's RNG seeded by its
        seed (reproducible whatever the batching, at the cost of batching)."""
        if seeds is not None:
            import torch

            if len(seeds) != len(prompts):
                raise ValueError(f"got {len(seeds)} seeds for {len(prompts)} prompts")
            out = []
            for prompt, seed in zip(prompts, seeds, strict=True):
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(seed)
                    out.append(self._generate_batch([list(prompt)] * params.n, params))
            return out
        flat = [list(p) for p in prompts for _ in range(params.n)]
        out: list[Completion] = []
        step = self.options.generation_batch_size
        for start in range(0, len(flat), step):
            out += self._generate_batch(flat[start : start + step], params)
        return [out[i * params.n : (i + 1) * params.n] for i in range(len(prompts))]

    def _generate_batch(self, prompts: list[list[int]], params: SamplingParams) -> list[Completion]:
        import torch

        device = next(self.model.parameters()).device
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, p in enumerate(prompts):  # left padding: new tokens line up at the right
            ids[i, width - len(p) :] = torch.tensor(p, dtype=torch.long)
            mask[i, width - len(p) :] = 1
        sample = not params.greedy
        kwargs: dict[str, Any] = dict(
            max_new_tokens=params.max_new_tokens,
            do_sample=sample,
            pad_token_id=self.pad_id,
            eos_token_id=self.eos_ids,
            output_logits=True,
            return_dict_in_generate=True,
        )
        if sample:
            kwargs.update(temperature=params.temperature, top_p=params.top_p, top_k=params.top_k)
        else:  # avoid warnings about sampling-only settings left in generation_config
            kwargs.update(temperature=None, top_p=None, top_k=None)
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                result = self.model.generate(
                    input_ids=ids.to(device), attention_mask=mask.to(device), **kwargs
                )
        finally:
            self.model.train(was_training)
        new = result.sequences[:, width:].cpu()
        temperature = params.temperature if sample else 1.0
        logits = torch.stack(result.logits, dim=1).float().cpu() / temperature  # (B, T, V)
        logprobs = torch.log_softmax(logits, dim=-1).gather(-1, new.unsqueeze(-1)).squeeze(-1)
        eos = set(self.eos_ids)
        completions = []
        for row, lp in zip(new.tolist(), logprobs.tolist(), strict=True):
            end = next((i + 1 for i, tok in enumerate(row) if tok in eos), None)
            n = end if end is not None else len(row)
            tokens = row[:n]
            completions.append(
                Completion(
                    token_ids=tokens,
                    logprobs=lp[:n],
                    text=self.tokenizer.decode(tokens, skip_special_tokens=True),
                    finish_reason="stop" if end is not None else "length",
                )
            )
        return completions

    def sync_weights(self, model: Any) -> None:
        """Nothing to do: this backend samples with the training model itself."""

    def close(self) -> None:
        self.model = None
