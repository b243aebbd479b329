"""``cgrpo``: run, check and inspect Critique-GRPO recipes.

Exit codes: 0 success; 2 a bad recipe or bad usage (nothing was built); 1 a failure while
running; 130 interrupted.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from cgrpo import __version__
from cgrpo.errors import (
    CgrpoError,
    DataError,
    InputError,
    PluginError,
    RecipeError,
    UsageError,
)

EXIT_OK, EXIT_RUNTIME, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="cgrpo",
        description="Critique-GRPO: RL for reasoning LLMs from rewards and critiques.",
        epilog="Overrides are key=value pairs with dotted keys, e.g. "
        "algorithm.samples_per_prompt=8 policy=vllm run.name=try2",
    )
    p.add_argument("--version", action="version", version=f"cgrpo {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    _add_run_commands(sub)
    _add_check(sub)
    _add_critique(sub)
    _add_export(sub)
    _add_eval(sub)
    _add_report(sub)
    _add_list(sub)
    return p


def _add_run_commands(sub: Any) -> None:
    run = sub.add_parser("run", help="train with a recipe")
    run.add_argument("recipe", help="path to a YAML recipe")
    run.add_argument("overrides", nargs="*", help="key=value overrides")

    sft = sub.add_parser(
        "sft",
        help="run only the recipe's supervised warm-up (cgrpo run with train.steps=0): its "
        "checkpoint is RUN/checkpoints/step-0",
    )
    sft.add_argument("recipe", help="path to a YAML recipe with sft.steps > 0")
    sft.add_argument("overrides", nargs="*", help="key=value overrides")


def _add_check(sub: Any) -> None:
    check = sub.add_parser("check", help="validate a recipe and print it resolved (builds nothing)")
    check.add_argument("recipe", help="path to a YAML recipe")
    check.add_argument("overrides", nargs="*", help="key=value overrides")
    check.add_argument(
        "--gpus", type=int, help="GPUs the run will use (default: torchrun's WORLD_SIZE, or 1)"
    )
    check.add_argument(
        "--gpu-memory", help="memory of each GPU, e.g. 80GiB (default: the visible GPU's)"
    )
    check.add_argument(
        "--data-rows",
        type=int,
        metavar="N",
        help="read only the first N usable rows of each task (default: all; 0: skip the data)",
    )


def _add_critique(sub: Any) -> None:
    crit = sub.add_parser(
        "critique", help="run the recipe's critic on a few samples and show cost and latency"
    )
    crit.add_argument("recipe", help="path to a YAML recipe")
    crit.add_argument("overrides", nargs="*", help="key=value overrides")
    crit.add_argument("--samples", help="a run's samples.jsonl to critique (default: the task)")
    crit.add_argument("-n", type=int, default=4, help="how many samples (default 4)")


def _add_export(sub: Any) -> None:
    exp = sub.add_parser(
        "export", help="write a checkpoint as plain transformers weights (LoRA merged)"
    )
    exp.add_argument("checkpoint", help="a checkpoint directory, or a run directory (newest)")
    exp.add_argument("--out", required=True, help="directory to write (new or empty)")
    exp.add_argument(
        "--dtype", default="bfloat16", choices=["bfloat16", "float32"], help="written dtype"
    )
    exp.add_argument("--base", help="base model directory of a LoRA checkpoint (default: saved)")


def _add_eval(sub: Any) -> None:
    ev = sub.add_parser(
        "eval",
        help="evaluate a model, checkpoint or run on benchmarks or a recipe's eval problems",
    )
    ev.add_argument(
        "target",
        nargs="?",
        help="a YAML recipe (its eval section; --model for the weights), a run directory "
        "(its recipe and newest checkpoint), a checkpoint, or an HF model directory",
    )
    ev.add_argument("overrides", nargs="*", help="key=value recipe overrides")
    ev.add_argument("--model", help="with a recipe: model directory, checkpoint, or run")
    ev.add_argument(
        "--benchmarks",
        help="comma-separated benchmarks (cgrpo list benchmark), each optionally NAME=PATH "
        "to a local copy, e.g. math-500=data/math500.jsonl,aime24",
    )
    ev.add_argument("--k", type=int, help="samples per problem for pass@k/avg@k/maj@k")
    ev.add_argument("--temperature", type=float, help="temperature of the k samples")
    ev.add_argument(
        "--backend", choices=["hf", "vllm", "vllm-server"], help="sampling backend (policy)"
    )
    ev.add_argument("--limit", type=int, help="evaluate only the first N problems of each set")
    ev.add_argument("--verify-workers", type=int, help="verifying processes (0 = auto, 1 = none)")
    ev.add_argument("--out", help="output directory (default: eval/MODEL_NAME)")
    ev.add_argument(
        "--compare", nargs=2, metavar=("DIR_A", "DIR_B"),
        help="instead: two eval output directories side by side, with B - A per benchmark",
    )  # fmt: skip


def _add_report(sub: Any) -> None:
    rep = sub.add_parser("report", help="plot one or several runs: PNGs, report.html, report.md")
    rep.add_argument("runs", nargs="+", help="run directories (overlaid on every panel)")
    rep.add_argument(
        "--out", help="output directory (default: RUN/report, or ./report for several)"
    )
    rep.add_argument(
        "--metrics", help="comma-separated metrics, one panel each, instead of the defaults"
    )
    rep.add_argument(
        "--smooth",
        type=float,
        default=None,
        metavar="FACTOR",
        help="exponential smoothing of per-step curves, 0 (off) to below 1 (default 0.8; "
        "the raw curve is drawn faint behind)",
    )


def _add_list(sub: Any) -> None:
    lst = sub.add_parser("list", help="list registered components")
    lst.add_argument(
        "kind", nargs="?", help="policy, critic, verifier, advantage, task, benchmark or observer"
    )
    lst.add_argument(
        "--format",
        choices=["auto", "table", "markdown"],
        default="auto",
        help="table (rich, wrapped to the terminal) or markdown (whole words and summaries, "
        "for pipes and files); auto: a table on a terminal, markdown otherwise",
    )


def cmd_check(
    recipe_path: str,
    overrides: Sequence[str],
    gpus: int | None,
    gpu_memory: str | None,
    data_rows: int | None = None,
) -> int:
    from omegaconf import OmegaConf
    from rich.console import Console
    from rich.markup import escape
    from rich.syntax import Syntax

    from cgrpo.config import load_recipe
    from cgrpo.model import memory_plan

    if gpus is not None and gpus < 1:
        print("cgrpo check: --gpus must be 1 or more", file=sys.stderr)
        return EXIT_USAGE
    if data_rows is not None and data_rows < 0:
        print("cgrpo check: --data-rows must be 0 (skip the data) or more", file=sys.stderr)
        return EXIT_USAGE
    try:
        memory = memory_plan.parse_memory(gpu_memory) if gpu_memory else None
    except ValueError as exc:
        print(f"cgrpo check: --gpu-memory: {exc}", file=sys.stderr)
        return EXIT_USAGE
    console = Console()
    # a CPU run: the recipe says so, or no GPU is visible and none was described
    asked_gpu = gpus is not None or memory is not None
    gpus = gpus or memory_plan.default_gpus()
    memory = memory if memory is not None else memory_plan.visible_gpu_memory()

    def show_plan(recipe) -> bool:
        """Print the plan; False when it does not fit."""
        device = recipe.model.device
        cpu = device == "cpu" or (device == "auto" and memory is None and not asked_gpu)
        verdict = memory_plan.check_recipe(recipe, gpus, memory, cpu)
        console.print(escape(verdict.text), highlight=False)
        if verdict.fits is False:
            console.print(escape(memory_plan.fixes_text(verdict.fixes)), highlight=False)
        return verdict.fits is not False

    try:
        recipe, resolved = load_recipe(recipe_path, overrides)
    except RecipeError:
        _show_what_still_can_be(console, recipe_path, overrides, data_rows, show_plan)
        raise
    console.print(Syntax(OmegaConf.to_yaml(resolved), "yaml", background_color="default"))
    fits = show_plan(recipe)
    data_ok = data_rows == 0 or _show_data(console, recipe, data_rows)
    if not fits:
        print(
            f"cgrpo check: {recipe_path}: the memory plan does not fit (see above)",
            file=sys.stderr,
        )
    if not data_ok:
        print(f"cgrpo check: {recipe_path}: the data has problems (see above)", file=sys.stderr)
    if not (fits and data_ok):
        return EXIT_USAGE
    console.print(f"[green]recipe OK[/green]: {recipe_path}")
    return EXIT_OK


def _show_what_still_can_be(console, recipe_path, overrides, data_rows, show_plan) -> None:
    """For a recipe with problems: the memory plan (it needs only the model, algorithm,
    policy and distributed sections) and the data's problems (each task or benchmark whose
    own section is valid), so that every problem shows at once; a data path that exists
    only on the training machine, say, does not hide the plan."""
    import logging

    from cgrpo.app.check import partial_recipe
    from cgrpo.config.load import load_raw
    from cgrpo.model import memory_plan
    from cgrpo.plugins import get_registries

    said = logging.getLogger("cgrpo.config")  # its warnings were shown by the first load
    level = said.level
    said.setLevel(logging.ERROR)
    try:
        raw = load_raw(recipe_path, overrides)
    except CgrpoError:
        return
    finally:
        said.setLevel(level)
    plan = memory_plan.partial_recipe(raw)
    if plan is not None:
        show_plan(plan)
    if data_rows != 0:
        _show_data(console, partial_recipe(raw, get_registries()), data_rows, False)


def _show_data(console, recipe, data_rows: int | None, prompt_lengths: bool = True) -> bool:
    """Read the recipe's tasks, print what was found; False when there are problems."""
    from rich.markup import escape

    from cgrpo.app.check import check_data
    from cgrpo.plugins import get_registries

    reports = check_data(recipe, get_registries(), data_rows, prompt_lengths)
    for report in reports:
        console.print(escape("\n".join(report.lines())), highlight=False)
    return not any(r.problems for r in reports)


def cmd_list(kind: str | None, fmt: str = "auto") -> int:
    from cgrpo.cli.listing import list_components
    from cgrpo.registry import KINDS, closest

    if kind is not None and kind not in KINDS:
        guess = closest(kind, list(KINDS))
        hint = f" Did you mean {guess!r}?" if guess else ""
        print(
            f"cgrpo list: unknown kind {kind!r}; kinds: {', '.join(KINDS)}.{hint}", file=sys.stderr
        )
        return EXIT_USAGE
    list_components([kind] if kind else list(KINDS), fmt)
    return EXIT_OK


def cmd_report(
    runs: Sequence[str], out: str | None, metrics: str | None, smoothing: float | None
) -> int:
    from pathlib import Path

    from cgrpo.report import DEFAULT_SMOOTHING, read_run, write_report

    smoothing = DEFAULT_SMOOTHING if smoothing is None else smoothing
    if not 0 <= smoothing < 1:
        raise UsageError(f"--smooth {smoothing:g}: give a factor from 0 (off) to below 1")
    loaded = [read_run(r) for r in runs]
    target = Path(out) if out else (Path(runs[0]) / "report" if len(runs) == 1 else Path("report"))
    only = [m.strip() for m in metrics.split(",") if m.strip()] if metrics else None
    pngs, left_out = write_report(loaded, target, only, smoothing)
    empty = [r.name for r in loaded if not r.rows]
    if empty:
        print(f"cgrpo report: no steps logged yet in {', '.join(empty)}", file=sys.stderr)
    for line in left_out:
        print(f"cgrpo report: not drawn: {line}")
    print(f"cgrpo report: {len(pngs)} figures, {target / 'report.html'}, {target / 'report.md'}")
    return EXIT_OK


def cmd_run(recipe_path: str, overrides: Sequence[str]) -> int:
    from cgrpo.app.run import run_recipe

    return run_recipe(recipe_path, overrides)


def _cmd_eval(args: argparse.Namespace) -> int:
    from cgrpo.cli.evaluate import run_compare, run_eval

    if args.compare:
        if args.target:
            raise UsageError("--compare takes two eval directories and no target")
        return run_compare(*args.compare, args.out)
    if not args.target:
        raise UsageError("name what to evaluate: a recipe, run, checkpoint or model")
    return run_eval(
        args.target, args.overrides, args.model, args.k, args.temperature, args.limit,
        args.out, args.benchmarks, args.backend, args.verify_workers,
    )  # fmt: skip


def _cmd_export(args: argparse.Namespace) -> int:
    from cgrpo.cli.export import run_export

    return run_export(args.checkpoint, args.out, args.dtype, args.base)


def _cmd_critique(args: argparse.Namespace) -> int:
    from cgrpo.cli.critique import run_critique

    return run_critique(args.recipe, args.overrides, args.samples, args.n)


COMMANDS = {
    "check": lambda a: cmd_check(a.recipe, a.overrides, a.gpus, a.gpu_memory, a.data_rows),
    "list": lambda a: cmd_list(a.kind, a.format),
    "run": lambda a: cmd_run(a.recipe, a.overrides),
    # the warm-up alone, as a run of zero RL steps
    "sft": lambda a: cmd_run(a.recipe, [*a.overrides, "train.steps=0"]),
    "eval": _cmd_eval,
    "report": lambda a: cmd_report(a.runs, a.out, a.metrics, a.smooth),
    "export": _cmd_export,
    "critique": _cmd_critique,
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # key=value overrides given after an option (argparse stops at the option)
        if hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra):
            args.overrides += extra
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return COMMANDS[args.command](args)
    except RecipeError as exc:
        print(exc.render(), file=sys.stderr)
        return EXIT_USAGE
    except (UsageError, InputError) as exc:
        print(f"cgrpo {args.command}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (PluginError, DataError, CgrpoError) as exc:
        print(f"cgrpo {args.command}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_RUNTIME
    except KeyboardInterrupt:
        print("cgrpo: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
