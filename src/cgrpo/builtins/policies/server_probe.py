"""The check after every weight sync of the ``vllm-server`` backend: do the servers now
sample with the trainer's weights, and report log-probs as the trainer computes them?

Each live server samples ``PROBE_TOKENS`` tokens after one prompt (the last one sampled,
or a fixed text) at the recipe's temperature, with a fixed seed; the trainer scores the
same tokens. The largest |server - trainer| log-prob difference is the step's
``policy/sync_logprob_diff_max``; above ``sync_tolerance`` the run stops. One probe
catches weights that did not load, a server answering under another weight version, and a
server started without ``--logprobs-mode processed_logprobs`` (its log-probs ignore the
temperature).
"""

from __future__ import annotations

import asyncio
from typing import Any

from cgrpo.builtins.policies.server_pool import EventLoopThread, Server, ServerFailed, ServerPool
from cgrpo.builtins.policies.server_protocol import choice_versions, generate_on, sampling_body
from cgrpo.errors import TrainingError
from cgrpo.types import SamplingParams

PROBE_TOKENS = 8
Answer = tuple[str, list[int], list[float]]  # (server, sampled ids, their log-probs)


class SyncProbe:
    def __init__(
        self,
        pool: ServerPool,
        loop: EventLoopThread,
        recipe: Any,
        pad_id: int,
        precision: Any,
        tolerance: float,
    ):
        self.pool, self.loop, self.pad_id, self.precision = pool, loop, pad_id, precision
        self.temperature = recipe.sampling.temperature
        self.chunk_tokens = recipe.algorithm.logprob_chunk_tokens
        self.tolerance = tolerance

    def check(self, model: Any, prompt: list[int], tag: str) -> float:
        """The largest difference over the live servers (rank 0 asks them; every rank
        scores the same tokens, which FSDP needs); a TrainingError above the tolerance."""
        import torch

        from cgrpo.model import distributed
        from cgrpo.model.logprobs import sequence_logprobs

        probe = (
            (prompt, self.loop.run(self._answers(prompt, tag))) if distributed.is_main() else None
        )
        prompt, answers = distributed.broadcast(probe)
        worst, where = 0.0, ""
        for url, ids, server_lps in answers:
            trainer = sequence_logprobs(
                model, prompt, ids, self.temperature, self.pad_id, self.precision,
                self.chunk_tokens,
            )  # fmt: skip
            diff = float((trainer - torch.tensor(server_lps)).abs().max())
            if diff >= worst:
                worst, where = diff, url
        if worst > self.tolerance:
            raise TrainingError(
                f"after weight sync the vLLM server {where} and the trainer disagree: max "
                f"|log-prob difference| {worst:.4f} > sync_tolerance {self.tolerance}. The "
                "weights did not take effect, or the server was started without "
                "--logprobs-mode processed_logprobs; stopping"
            )
        return worst

    async def _answers(self, prompt: list[int], tag: str) -> list[Answer]:
        """Every live server's probe sample; a server that fails or answers under other
        weights leaves the pool."""
        params = SamplingParams(n=1, temperature=self.temperature, max_new_tokens=PROBE_TOKENS)
        body = sampling_body(prompt, params, 0, [])

        async def one(server: Server) -> Answer | None:
            try:
                answer = await generate_on(self.pool, server, body)
            except ServerFailed as exc:
                self.pool.mark_dead(server, f"probe after the weight sync failed: {exc}")
                return None
            choice = answer["choices"][0]
            if choice_versions(choice) != [tag]:
                why = f"answered the probe under weights {choice_versions(choice)}, not {tag!r}"
                self.pool.mark_dead(server, why)
                return None
            lps = [c["logprob"] for c in choice["logprobs"]["content"]]
            return server.url, choice["token_ids"], lps

        answers = await asyncio.gather(*(one(s) for s in self.pool.live()))
        if not self.pool.live():
            raise TrainingError("weight sync probe: " + self.pool.none_answer())
        return [a for a in answers if a is not None]
