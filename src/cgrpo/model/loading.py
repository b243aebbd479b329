"""Load the policy model and tokenizer a recipe names (creating a tiny one if asked)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from cgrpo.errors import TrainingError

log = logging.getLogger(__name__)


def resolve_device(name: str) -> Any:
    """'auto' -> CUDA when available, else CPU; anything else is passed to torch.device."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise TrainingError(
            f"model.device is {name!r} but CUDA is not available; use 'auto' or 'cpu'"
        )
    return device


def eos_token_ids(generation_config: Any, tokenizer: Any) -> list[int]:
    """Every token that ends a response: the generation config's EOS ids (one or a list;
    the config may be None) and the tokenizer's EOS (chat models often end turns with a
    token of their own)."""
    eos = getattr(generation_config, "eos_token_id", None)
    eos = eos if isinstance(eos, list) else [eos]
    return sorted({i for i in [*eos, tokenizer.eos_token_id] if i is not None})


def load_policy(
    model_cfg: Any,
    device: str | None = None,
    adapter_dir: str | Path | None = None,
    seed: int = 0,
) -> tuple[Any, Any, Any]:
    """``(model, tokenizer, device)`` for ``recipe.model``; the model is in train mode.

    Full training loads the weights in float32 whatever ``model.dtype`` says: they are the
    master weights the optimizer updates, and ``model.dtype`` is the compute dtype applied
    by autocast (:mod:`cgrpo.model.precision`). With ``model.lora`` the frozen base is
    loaded in the compute dtype and float32 adapters are attached: new ones initialised
    from ``seed``, or those in ``adapter_dir`` when resuming. ``device`` overrides
    ``model_cfg.device`` (each torchrun rank uses its own GPU)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from cgrpo.model.precision import DTYPES, MASTER_DTYPE

    path = Path(model_cfg.path).expanduser()
    if model_cfg.create is not None:
        create_on_rank0(path, model_cfg.create)
    source = str(path) if path.exists() else model_cfg.path
    device = resolve_device(device or model_cfg.device)
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            source, trust_remote_code=model_cfg.trust_remote_code
        )
        dtype = MASTER_DTYPE if model_cfg.lora is None else DTYPES[model_cfg.dtype]
        if _sharded_without_weights(path):
            model = uninitialised_model(source, dtype, model_cfg.trust_remote_code)
        else:
            model = AutoModelForCausalLM.from_pretrained(
                source, dtype=dtype, trust_remote_code=model_cfg.trust_remote_code
            )
    except OSError as exc:
        raise TrainingError(
            f"cannot load model.path {model_cfg.path!r}: {exc}. Give a local directory with "
            "config.json and weights, or a hub id reachable from this machine"
        ) from exc
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if tokenizer.eos_token_id is None:
        raise TrainingError(f"the tokenizer at {source} has no eos_token; set one in its config")
    model.to(device)
    from cgrpo.model.attention import use_cgrpo_sdpa

    use_cgrpo_sdpa(model)  # packed micro-batches; on CPU, masked GQA without copying K, V
    if model_cfg.gradient_checkpointing:
        # non-reentrant: also correct when the layer inputs need no gradient (frozen base)
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    if model_cfg.lora is not None:
        from cgrpo.model.lora import attach_lora, trainable_summary

        model = attach_lora(model, model_cfg.lora, adapter_dir, seed)
        log.info("LoRA: %s", trainable_summary(model))
    model.train()
    return model, tokenizer, device


def create_on_rank0(path: Path, create: Any) -> None:
    """Create the tiny model at ``path`` when it has none (``model.create``): rank 0 alone
    under torchrun, while the other ranks wait for its outcome (a rank reading a model
    another one is still writing failed with "Unrecognized model"); a failure on rank 0
    stops every rank instead of leaving them waiting."""
    from cgrpo.model import distributed

    failure = None
    if distributed.is_main() and not (path / "config.json").exists():
        from cgrpo.model.tiny import create_tiny_model

        # a warning: on the console (and in train.log) wherever it happens
        log.warning("model.path %s has no model: creating a tiny random one there "
                    "(model.create)", path)  # fmt: skip
        try:
            create_tiny_model(path, **create.model_dump(exclude={"anywhere"}))
        except Exception as exc:
            if not distributed.active():
                raise
            failure = f"{type(exc).__name__}: {exc}"
    failure = distributed.broadcast(failure)  # every rank waits here for rank 0
    if failure is not None:
        raise TrainingError(f"creating the tiny model at {path} failed on rank 0: {failure}")


def _sharded_without_weights(path: Path) -> bool:
    """A checkpoint of an fsdp run that holds its weights only as shards (``dcp/``)."""
    from cgrpo.model.shards import is_sharded_checkpoint

    return is_sharded_checkpoint(path) and not any(path.glob("*.safetensors"))


def uninitialised_model(source: str, dtype: Any, trust_remote_code: bool) -> Any:
    """The model of ``source``'s config.json with its weights left uninitialised: they are
    about to be overwritten from the checkpoint's shards (random init of 8B parameters
    would take minutes for nothing)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        from transformers.initialization import no_init_weights
    except ImportError:  # transformers 4.x
        from transformers.modeling_utils import no_init_weights

    config = AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code)
    with no_init_weights():
        model = AutoModelForCausalLM.from_config(
            config, dtype=dtype, trust_remote_code=trust_remote_code
        )
    model.tie_weights()  # skipped with the initialisation; tied embeddings must be one
    return model
