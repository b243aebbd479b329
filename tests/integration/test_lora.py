"""LoRA through peft: a frozen base in the compute dtype, float32 adapters that alone are
trained, checkpointed and resumed, and a KL reference that is the base with its adapters
disabled. End to end through the real CLI on the tiny model (real peft, CPU)."""

import json
import signal

import pytest
import torch
from safetensors.torch import load_file

from tests.helpers import REPO, run_cli

QUICKSTART = str(REPO / "recipes" / "quickstart-cpu.yaml")
LORA = str(REPO / "recipes" / "quickstart-lora-cpu.yaml")


def test_lora_model_trains_only_float32_adapters_over_a_frozen_bf16_base(tiny_model_dir):
    from cgrpo.config.schema import LoraSpec, ModelConfig
    from cgrpo.model.loading import load_policy

    cfg = ModelConfig(path=str(tiny_model_dir), dtype="bfloat16", device="cpu", lora=LoraSpec(r=4))
    model, _, _ = load_policy(cfg)
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    frozen = {n: p for n, p in model.named_parameters() if not p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    assert all(p.dtype == torch.float32 for p in trainable.values())
    assert all(p.dtype == torch.bfloat16 for p in frozen.values())
    # all-linear: every projection of every layer, never the output layer
    assert any("q_proj.lora_A" in n for n in trainable)
    assert any("down_proj.lora_B" in n for n in trainable)
    assert not any("lm_head" in n or "embed" in n for n in trainable)


def test_kl_reference_is_the_base_model_with_adapters_disabled(tiny_model_dir, tiny):
    from transformers import AutoModelForCausalLM

    from cgrpo.algo.mixing import TrainRow, collate
    from cgrpo.config.schema import LoraSpec
    from cgrpo.model.logprobs import forward_response
    from cgrpo.model.lora import adapters_disabled, attach_lora

    base, tok = tiny
    model = attach_lora(
        AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32), LoraSpec(r=4)
    )
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:  # B starts at zero; make the adapters change the output
                p.normal_(0, 0.5)
    prompt = tok.encode("What is 2 + 3?")
    batch = collate([TrainRow(0, prompt, tok.encode(" 5. The answer is 5"), None, False, 0.0)], 0)
    with torch.no_grad():
        reference, _ = forward_response(base, batch, 1.0)
        adapted, _ = forward_response(model, batch, 1.0)
        with adapters_disabled(model):
            disabled, _ = forward_response(model, batch, 1.0)
        with adapters_disabled(base):  # a plain model is left as it is
            plain, _ = forward_response(base, batch, 1.0)
    assert torch.allclose(disabled, reference, atol=1e-6)
    assert torch.equal(plain, reference)
    assert (adapted - reference).abs().max() > 1e-3


def test_merged_weights_carry_the_adapters_under_transformers_names(tiny_model_dir, tiny):
    """What a vLLM engine is sent: the base weights with the adapters merged in, named as in
    a plain transformers model, and the frozen base itself left untouched."""
    from transformers import AutoModelForCausalLM

    from cgrpo.config.schema import LoraSpec
    from cgrpo.model.lora import attach_lora, merged_weights

    base, _ = tiny
    model = attach_lora(
        AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32),
        LoraSpec(r=4, target_modules=["q_proj", "down_proj"]),
    )
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    before = {n: p.clone() for n, p in model.named_parameters() if not p.requires_grad}
    weights = dict(merged_weights(model))
    assert weights.keys() == set(base.state_dict())
    plain = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    plain.load_state_dict(weights)
    ids = torch.tensor([[5, 9, 30, 41, 7, 12]])
    with torch.no_grad():
        assert torch.allclose(plain(input_ids=ids).logits, model(input_ids=ids).logits, atol=1e-5)
    changed = [n for n in weights if not torch.equal(weights[n], base.state_dict()[n])]
    assert changed and all("q_proj.weight" in n or "down_proj.weight" in n for n in changed)
    after = {n: p for n, p in model.named_parameters() if not p.requires_grad}
    assert all(torch.equal(before[n], after[n]) for n in before)


def metrics(root, name):
    lines = (root / "runs" / name / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


@pytest.fixture(scope="module")
def warm(tmp_path_factory):
    """The quickstart's warm-up in full (LoRA adapts a pretrained model; the tiny model is
    random until warmed up), as recipes/quickstart-lora-cpu.yaml asks."""
    root = tmp_path_factory.mktemp("lora")
    out = run_cli(
        "run",
        QUICKSTART,
        "train.steps=1",
        "run.console=plain",
        f"model.path={root / 'tiny'}",
        f"run.output_dir={root / 'runs'}",
        "run.name=warm",
        cwd=root,
    )
    assert out.returncode == 0, out.stderr
    return root, root / "runs" / "warm" / "checkpoints" / "step-1"


def lora_args(root, base, name, *extra):
    return [
        "run",
        LORA,
        f"model.path={base}",
        "run.console=plain",
        f"run.output_dir={root / 'runs'}",
        f"run.name={name}",
        *extra,
    ]


@pytest.mark.slow
def test_lora_quickstart_learns_and_checkpoints_only_adapters(warm):
    root, base = warm
    out = run_cli(*lora_args(root, base, "learn"), cwd=root)
    assert out.returncode == 0, out.stderr
    assert "LoRA adapters" in out.stdout and "parameters trainable" in out.stdout
    m = metrics(root, "learn")
    first = sum(x["reward/initial_mean"] for x in m[:10]) / 10
    last = sum(x["reward/initial_mean"] for x in m[-10:]) / 10
    # measured here (seed 0, 1 thread): 0.725 -> 0.805; lr 1e-4 instead of 1e-3 gave +0.02
    assert last > first + 0.05, (first, last)
    ckpt = root / "runs" / "learn" / "checkpoints" / "step-60"
    names = {p.name for p in ckpt.iterdir()}
    assert {"adapter_model.safetensors", "adapter_config.json"} <= names
    assert "model.safetensors" not in names
    adapters = load_file(ckpt / "adapter_model.safetensors")
    assert adapters and all("lora_" in k for k in adapters)
    base_size = (base / "model.safetensors").stat().st_size
    assert (ckpt / "adapter_model.safetensors").stat().st_size < base_size / 3


@pytest.mark.slow
def test_lora_sigkill_then_resume_is_bitwise_identical(warm):
    """Adapters, optimizer and data position resume exactly (the adapters' random init is
    seeded by run.seed, so two fresh runs agree too)."""
    root, base = warm
    # with a KL term: its reference is the base, i.e. the policy with adapters disabled
    common = ("train.steps=5", "train.save_every=1", "algorithm.loss.kl_coef=0.05")
    ref = run_cli(*lora_args(root, base, "ref", *common), cwd=root)
    assert ref.returncode == 0, ref.stderr
    crashed = run_cli(
        *lora_args(root, base, "kill", *common), cwd=root, env={"CGRPO_CRASH_AT": "step:3"}
    )
    assert crashed.returncode == -signal.SIGKILL
    resumed = run_cli(*lora_args(root, base, "kill", *common, "resume=auto"), cwd=root)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from" in resumed.stdout and "step-2" in resumed.stdout
    a = load_file(root / "runs" / "ref" / "checkpoints" / "step-5" / "adapter_model.safetensors")
    b = load_file(root / "runs" / "kill" / "checkpoints" / "step-5" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    for x, y in zip(metrics(root, "ref"), metrics(root, "kill"), strict=True):
        assert x["loss/total"] == y["loss/total"]
        assert x["reward/initial_mean"] == y["reward/initial_mean"]
    kl = [m["kl/mean"] for m in metrics(root, "ref")]
    assert kl[0] == 0.0 and kl[-1] > 0  # adapters start at zero (B = 0), then move away


@pytest.mark.slow
def test_export_merges_adapters_into_plain_transformers_weights(warm, tmp_path):
    from transformers import AutoModelForCausalLM

    from cgrpo.model.lora import attach_lora

    root, base = warm
    out = run_cli(*lora_args(root, base, "export", "train.steps=2"), cwd=root)
    assert out.returncode == 0, out.stderr
    run_dir = root / "runs" / "export"
    exported = run_cli(
        "export", str(run_dir), "--out", str(tmp_path / "merged"), "--dtype", "float32"
    )
    assert exported.returncode == 0, exported.stderr
    assert "merged" in exported.stdout
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged", dtype=torch.float32)
    assert not any("lora" in n for n, _ in merged.named_parameters())
    adapted = attach_lora(
        AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32),
        None,
        run_dir / "checkpoints" / "step-2",
    )
    ids = torch.tensor([[5, 9, 30, 41, 7, 12]])
    with torch.no_grad():
        a = adapted(input_ids=ids).logits
        b = merged(input_ids=ids).logits
    assert torch.allclose(a, b, atol=1e-4)
    # a second export into the same directory is refused (exit 2), as is a missing source
    again = run_cli("export", str(run_dir), "--out", str(tmp_path / "merged"))
    assert again.returncode == 2 and "not empty" in again.stderr
    missing = run_cli("export", str(tmp_path / "nothing"), "--out", str(tmp_path / "x"))
    assert missing.returncode == 2 and "neither a complete checkpoint" in missing.stderr
