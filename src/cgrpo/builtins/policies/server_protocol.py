"""What cgrpo says to a vLLM server, in vLLM's own terms (tested with vLLM 0.32).

- Sampling: ``POST /inference/v1/generate`` (the token-in/token-out endpoint, enabled by
  ``--enable-scale-out``): token ids in; per sample its token ids, the sampled tokens'
  log-probs (``--logprobs-mode processed_logprobs``: after temperature, like the
  trainer's) and ``weight_versions``, the spans of output tokens produced under each
  weight version the engine carried. ``/v1/completions`` returns no weight version, so a
  lagging server could not be told from a current one there.
- Weight swap (``VLLM_SERVER_DEV_MODE=1`` enables these routes): ``/pause?mode=wait``
  (requests in flight finish on the weights they started with), the load itself
  (``/collective_rpc`` ``reload_weights`` from a directory, or vLLM's NCCL transfer),
  ``/reset_prefix_cache`` (no prompt KV computed with the old weights is reused),
  ``/update_weight_version``, ``/resume``.
- Weight versions are the strings ``"<trainer nonce>:<count>"``: ``count`` syncs made by
  one trainer process, ``nonce`` drawn when it starts, so weights another trainer (or this
  run before a restart) pushed never pass for this one's; a server restarted from disk
  says ``"default"``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from cgrpo.builtins.policies.server_pool import GENERATE, Server, ServerFailed, ServerPool
from cgrpo.errors import TrainingError
from cgrpo.types import Completion, SamplingParams

log = logging.getLogger(__name__)


def version_tag(nonce: str, count: int) -> str:
    return f"{nonce}:{count}"


def tag_count(tag: str | None, nonce: str) -> int | None:
    """The sync count of a weight version written by the trainer with ``nonce``, else None
    (another trainer's, or the weights a server started with: ``"default"``)."""
    head, _, count = (tag or "").rpartition(":")
    return int(count) if head == nonce and count.isdigit() else None


def sampling_body(
    prompt: Sequence[int], params: SamplingParams, seed: int | None, eos_ids: Sequence[int]
) -> dict[str, Any]:
    """The JSON of one generate request: ``params.n`` samples of ``prompt`` (the caller
    adds a fresh ``request_id`` to each attempt)."""
    greedy = params.greedy
    sampling = {
        "n": params.n,
        "temperature": 0.0 if greedy else params.temperature,
        "top_p": 1.0 if greedy else params.top_p,
        "top_k": 0 if greedy or params.top_k <= 0 else params.top_k,
        "max_tokens": params.max_new_tokens,
        "logprobs": 0,  # the sampled token's own log-prob
        "stop_token_ids": list(eos_ids),
        "detokenize": False,
    }
    if seed is not None:
        sampling["seed"] = seed
    return {"token_ids": list(prompt), "sampling_params": sampling}


def choice_versions(choice: dict[str, Any]) -> list[str]:
    """The weight versions a sample was produced under, oldest first ([] when the server
    reports none)."""
    return [span["version"] for span in choice.get("weight_versions") or []]


def completions(
    answer: dict[str, Any],
    eos_ids: Sequence[int],
    decode: Callable[[list[int]], str],
    version: int | None,
) -> list[Completion]:
    """The samples of a generate answer as completions, cut at the first EOS (kept),
    with the kept tokens' log-probs."""
    from cgrpo.algo.mixing import cut_at_eos

    out = []
    for choice in sorted(answer["choices"], key=lambda c: c["index"]):
        ids, ended = cut_at_eos(choice["token_ids"], eos_ids)
        content = (choice.get("logprobs") or {}).get("content") or []
        if len(content) < len(ids):
            raise TrainingError(
                "a vLLM server answered without per-token log-probs; cgrpo asks for them "
                "(sampling_params.logprobs=0)"
            )
        out.append(
            Completion(
                token_ids=ids,
                logprobs=[c["logprob"] for c in content[: len(ids)]],
                text=decode(ids),
                finish_reason="stop" if ended or choice["finish_reason"] == "stop" else "length",
                weight_version=version,
            )
        )
    return out


# -- the weight swap ---------------------------------------------------------------------


async def swap_weights(
    pool: ServerPool, server: Server, tag: str, load: Callable[[Server], Awaitable[None]]
) -> None:
    """Pause ``server`` (its requests in flight finish first), ``load`` the new weights,
    drop its prefix cache, label the weights ``tag`` and resume. A server left paused by
    a failure is resumed before the failure is raised."""
    async with server.lock:
        await pause(pool, server)
        try:
            await load(server)
        except BaseException:
            await pool.call(server, "POST", "/resume")
            raise
        await finish_swap(pool, server, tag)


async def pause(pool: ServerPool, server: Server) -> None:
    await pool.call(server, "POST", "/pause", params={"mode": "wait"})


async def finish_swap(pool: ServerPool, server: Server, tag: str) -> None:
    """After a load: reset the prefix cache, set the version, resume (always)."""
    try:
        await reset_prefix_cache(pool, server)
        await pool.call(server, "POST", "/update_weight_version", json={"new_version": tag})
    finally:
        await pool.call(server, "POST", "/resume")
    server.version = tag


async def reload_from(pool: ServerPool, server: Server, path: str) -> None:
    """The engine's own in-place reload, from safetensors in ``path`` (read by the server:
    the same path must hold the same files on its machine)."""
    await pool.call(
        server,
        "POST",
        "/collective_rpc",
        json={
            "method": "reload_weights",
            "kwargs": {"weights_path": path, "is_checkpoint_format": True},
        },
    )


async def reset_prefix_cache(pool: ServerPool, server: Server, tries: int = 20) -> None:
    """vLLM refuses (``success: false``) while blocks are held; with the server paused
    that clears at once, so a refusal that lasts is a broken server."""
    for _ in range(tries):
        answer = await pool.call(server, "POST", "/reset_prefix_cache")
        if answer is None or answer.get("success", True):
            return
        await asyncio.sleep(0.25)
    raise ServerFailed("it kept refusing to reset its prefix cache")


# -- what each server is ------------------------------------------------------------------


async def describe(pool: ServerPool, server: Server, context: int) -> dict[str, Any]:
    """The server's vLLM version, served model, context length and weight version; a
    TrainingError naming the missing setting when it cannot serve a run."""
    version = await pool.call(server, "GET", "/version")
    models = (await pool.call(server, "GET", "/v1/models"))["data"]
    try:
        weights = await pool.call(server, "GET", "/weight_info")
    except TrainingError as exc:
        raise TrainingError(
            f"vLLM server {server.url} has no weight-sync routes (/weight_info: {exc}); "
            "start it with VLLM_SERVER_DEV_MODE=1 in its environment (docs/vllm-server.md)"
        ) from exc
    longest = min(int(m.get("max_model_len") or context) for m in models)
    if longest < context:
        raise TrainingError(
            f"vLLM server {server.url} serves a context of {longest} tokens, less than "
            f"model.max_length {context}; start it with --max-model-len {context}"
        )
    info = {
        "vllm": version.get("version"),
        "model": models[0].get("root") or models[0].get("id"),
        "max_model_len": longest,
        "weights": weights.get("weight_version"),
    }
    server.info, server.version = info, info["weights"]
    return info


async def generate_on(pool: ServerPool, server: Server, body: dict[str, Any]) -> dict[str, Any]:
    """``server``'s answer to one generate request; a server that aborted it (an admin's
    ``/pause?mode=abort``) counts as failed, so the request goes elsewhere."""
    try:
        answer = await pool.call(server, "POST", GENERATE, json=body)
    except TrainingError as exc:
        if "Scale-out endpoints are disabled" in str(exc):
            raise TrainingError(
                f"{exc}. The vLLM server must serve {GENERATE}: start it with "
                "--enable-scale-out (docs/vllm-server.md)"
            ) from exc
        raise
    if any(c.get("finish_reason") == "abort" for c in answer["choices"]):
        raise ServerFailed("it aborted the request (paused with mode=abort?)")
    return answer
