"""The memory plan from a config.json and a recipe: hand-counted parameters, the paper
recipes against 80 GB GPUs, and ``cgrpo check`` stopping with the fixes named."""

import json

import pytest

from cgrpo.model.memory_plan import GIB, ModelShape, estimate, fixes, parse_memory
from tests.helpers import REPO, plan_setup

QWEN3_8B = {
    "architectures": ["Qwen3ForCausalLM"],
    "model_type": "qwen3",
    "hidden_size": 4096,
    "num_hidden_layers": 36,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "intermediate_size": 12288,
    "vocab_size": 151936,
    "tie_word_embeddings": False,
    "attention_bias": False,
}


@pytest.fixture
def qwen3_8b_dir(tmp_path):
    """A directory holding only a Qwen3-8B-shaped config.json (no weights) and a training
    file in the paper recipes' format (verl's parquet rows)."""
    from tests.verl_files import training_rows, write_parquet

    (tmp_path / "config.json").write_text(json.dumps(QWEN3_8B))
    write_parquet(tmp_path / "d.parquet", training_rows(2))
    return tmp_path


def test_qwen3_8b_parameter_count_by_hand():
    shape = ModelShape.from_config(QWEN3_8B)
    attention = 4096 * 4096 * 2 + 4096 * 1024 * 2  # q, o; k, v
    mlp = 3 * 4096 * 12288
    norms = 2 * 4096 + 2 * 128  # two RMSNorms, q_norm and k_norm
    embeddings = 2 * 151936 * 4096  # untied input and output
    assert shape.params == 36 * (attention + mlp + norms) + embeddings + 4096
    assert shape.params == 8_190_735_360  # the published 8.2B


def test_tied_qwen2_counts_the_embedding_once_and_has_qkv_bias(tiny_model_dir):
    cfg = {
        "model_type": "qwen2",
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "intermediate_size": 128,
        "vocab_size": 384,
        "tie_word_embeddings": True,
    }
    shape = ModelShape.from_config(cfg)
    # q 64x64+64, k 64x32+32, v 64x32+32, o 64x64, mlp 3x64x128, norms 2x64
    layer = 64 * 64 + 64 + 2 * (64 * 32 + 32) + 64 * 64 + 3 * 64 * 128 + 2 * 64
    assert shape.params == 2 * layer + 384 * 64 + 64
    # the conftest's tiny model has this shape: the count is what torch allocates
    from transformers import AutoModelForCausalLM

    real = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert shape.params == sum(p.numel() for p in real.parameters())
    assert ModelShape.from_config(json.loads((tiny_model_dir / "config.json").read_text())) == shape


def test_sharding_divides_the_training_state_by_the_gpus():
    shape = ModelShape.from_config(QWEN3_8B)
    one = estimate(shape, plan_setup(), 80 * GIB)
    eight = estimate(shape, plan_setup(strategy="fsdp", gpus=8), 80 * GIB)
    state = {w: (s, u) for w, s, u in one.lines}
    assert state["weights (float32 masters)"][0] == pytest.approx(shape.params * 4)
    assert state["AdamW moments (float32)"][0] == pytest.approx(shape.params * 8)
    sharded = {w: (s, u) for w, s, u in eight.lines}
    assert sharded["AdamW moments (float32, 1/8 each)"][0] == pytest.approx(shape.params)
    assert not one.fits and eight.fits
    # the engine sleeps during the update: sampling holds it, the update does not
    engine = next(line for line in eight.lines if line[0].startswith("vLLM engine"))
    assert engine[1] == pytest.approx(40 * GIB) and engine[2] == 0


def test_fixes_for_one_gpu_name_lora_and_fsdp():
    shape = ModelShape.from_config(QWEN3_8B)
    found = fixes(shape, plan_setup(), 80 * GIB)
    assert any("model.lora" in f for f in found)
    assert any("distributed.strategy=fsdp over at least 4 GPUs" in f for f in found)
    assert estimate(shape, plan_setup(lora_r=16, lora_targets="all-linear"), 80 * GIB).fits


def test_parse_memory():
    assert parse_memory("80GiB") == 80 * GIB
    assert parse_memory("80 GB") == 80e9
    assert parse_memory("81920MiB") == 80 * GIB
    assert parse_memory("1024") == 1024
    for bad in ("eighty", "80XB", "-1GiB", "0"):
        with pytest.raises(ValueError):
            parse_memory(bad)


def _check(capsys, *args):
    from cgrpo.cli.main import main

    code = main(["check", *args])
    out = capsys.readouterr()
    return code, out.out + out.err


def test_cgrpo_check_paper_recipe_fits_8_gpus_and_not_1(qwen3_8b_dir, capsys):
    recipe = str(REPO / "recipes" / "paper-qwen3-8b.yaml")
    over = [f"model.path={qwen3_8b_dir}", f"data.task.options.path={qwen3_8b_dir / 'd.parquet'}",
            "eval.every=0", "eval.benchmarks=[]"]  # no local benchmark copies here  # fmt: skip
    code, text = _check(capsys, recipe, *over, "--gpus", "8", "--gpu-memory", "80GiB")
    assert code == 0, text
    assert "8.19B parameters" in text and ": fits" in text
    code, text = _check(capsys, recipe, *over, "--gpus", "1", "--gpu-memory", "80GiB")
    assert code == 2
    assert "does NOT fit" in text
    assert "model.lora" in text and "distributed.strategy=fsdp" in text


def test_cgrpo_check_one_gpu_lora_recipe_fits(qwen3_8b_dir, capsys):
    recipe = str(REPO / "recipes" / "paper-qwen3-8b-lora.yaml")
    over = [f"model.path={qwen3_8b_dir}", f"data.task.options.path={qwen3_8b_dir / 'd.parquet'}",
            "eval.every=0", "eval.benchmarks=[]"]  # no local benchmark copies here  # fmt: skip
    code, text = _check(capsys, recipe, *over, "--gpus", "1", "--gpu-memory", "80GiB")
    assert code == 0, text
    assert "frozen base weights (bfloat16)" in text and ": fits" in text


def test_cgrpo_check_bad_gpu_memory_is_a_usage_error(capsys):
    recipe = str(REPO / "recipes" / "quickstart-cpu.yaml")
    code, text = _check(capsys, recipe, "--gpu-memory", "lots")
    assert code == 2 and "--gpu-memory" in text


def test_the_plan_is_printed_even_when_the_data_path_is_elsewhere(qwen3_8b_dir, capsys):
    """The issue's own command: only model.path given, the recipe's data path is a
    placeholder. The plan is still printed (planning from a laptop that holds only the
    config.json), then the data problem, exit 2."""
    recipe = str(REPO / "recipes" / "paper-qwen3-8b.yaml")
    code, text = _check(
        capsys, recipe, f"model.path={qwen3_8b_dir}", "--gpus", "8", "--gpu-memory", "80GiB"
    )
    assert code == 2
    assert "8.19B parameters" in text and "80.0 GiB: fits" in text
    assert "data.task.options.path" in text and "not found" in text
    code, text = _check(
        capsys, recipe, f"model.path={qwen3_8b_dir}", "--gpus", "1", "--gpu-memory", "80GiB"
    )
    assert code == 2 and "does NOT fit" in text
    assert "model.lora" in text and "distributed.strategy=fsdp" in text


def test_a_cpu_run_plan_says_it_is_a_cpu_run(tiny_model_dir, capsys):
    """No GPU visible and none described (--gpus, --gpu-memory): the plan is one CPU
    process's, with the parameters counted in millions and the sizes in MiB (not "0.00B
    parameters, 1 GPU" and a column of 0.0 GiB); model.device: cpu says so whatever is
    visible."""
    from cgrpo.model.memory_plan import params_text

    assert params_text(8_190_735_360) == "8.19B" and params_text(352_000) == "0.35M"
    recipe = str(REPO / "recipes" / "quickstart-cpu.yaml")
    over = [f"model.path={tiny_model_dir}", "model.device=cpu", "--data-rows", "0"]
    code, text = _check(capsys, recipe, *over)
    assert code == 0, text
    header = next(line for line in text.splitlines() if line.startswith("memory plan for"))
    assert header.endswith("M parameters, a CPU run (one process, no GPU):")
    assert "CUDA runtime" not in text and "MiB" in text
    code, text = _check(capsys, recipe, *over[:1], "--gpus", "1", "--gpu-memory", "24GiB",
                        "--data-rows", "0")  # fmt: skip
    assert "per GPU (1 GPU)" in text and "CUDA runtime" in text and ": fits" in text
