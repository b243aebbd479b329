"""Every hook a cgrpo plugin can implement.

A plugin is a module (or object) with functions decorated by ``cgrpo.hookimpl`` and named
like the specs below; it is found through the ``cgrpo`` entry-point group::

    [project.entry-points.cgrpo]
    my_plugin = "my_package.plugin"

Registration hooks receive a ``register`` callback and return nothing. Call it once per
component::

    register(name, factory, options=OptionsModel)

``factory(options, context)`` builds the component from its validated ``options`` (an
instance of ``OptionsModel``, a pydantic model; unknown keys are rejected) and a
:class:`cgrpo.interfaces.BuildContext`. When ``options`` is omitted, ``factory.Options`` is
used if present, else a model that accepts no keys. The factory's docstring first line is
the summary shown by ``cgrpo list``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pluggy

hookspec = pluggy.HookspecMarker("cgrpo")
hookimpl = pluggy.HookimplMarker("cgrpo")

Register = Callable[..., None]


@hookspec
def register_policy_backends(register: Register) -> None:
    """Register sampling backends (built-ins: ``hf``, ``vllm``).

    :param register: ``register(name, factory, options=None)``; the factory returns a
        :class:`cgrpo.interfaces.PolicyBackend`.
    """


@hookspec
def register_critics(register: Register) -> None:
    """Register critics (built-ins: ``ground_truth``, ``indicative``, ``self``, ``local``,
    ``openai``).

    :param register: ``register(name, factory, options=None)``; the factory returns a
        :class:`cgrpo.interfaces.Critic`.
    """


@hookspec
def register_verifiers(register: Register) -> None:
    """Register verifiers (built-ins: ``math``, ``exact``, ``choice``, ``python``,
    ``weighted``).

    :param register: ``register(name, factory, options=None)``; the factory returns a
        :class:`cgrpo.interfaces.Verifier`.
    """


@hookspec
def register_advantage_schemes(register: Register) -> None:
    """Register advantage schemes (built-ins: ``grpo``, ``rloo``, ``reinforce_pp``).

    :param register: ``register(name, factory, options=None)``; the factory returns a
        :class:`cgrpo.interfaces.AdvantageScheme`.
    """


@hookspec
def register_tasks(register: Register) -> None:
    """Register task sources, i.e. data (built-ins: ``jsonl``, ``csv``, ``parquet``,
    ``hf_dataset``, ``arithmetic``, ``mixture``).

    :param register: ``register(name, factory, options=None)``; the factory returns a
        :class:`cgrpo.interfaces.TaskSource`.
    """


@hookspec
def register_benchmarks(register: Register) -> None:
    """Register benchmarks: named evaluation sets for ``cgrpo eval --benchmarks`` and
    ``eval.benchmarks`` (built-ins: the paper's nine presets ``math-500``, ``minerva-math``,
    ``olympiadbench``, ``amc23``, ``aime24``, ``aime25``, ``gpqa-diamond``, ``mmlu-pro``,
    ``theoremqa``; ``rows`` for any file; ``arithmetic-test``).

    :param register: ``register(name, factory, options=None)``; the factory returns a
        :class:`cgrpo.interfaces.Benchmark`. A preset is usually
        :class:`cgrpo.builtins.benchmarks.benchmark.RowBenchmark` with its own defaults
        (``preset_options``), docs/evaluation.md shows one.
    """


@hookspec
def register_wrong_answers(register: Register) -> None:
    """Register makers of the wrong previous response of an SFT refinement example
    (``sft.wrong_answer``; built-ins ``other_solution``, ``perturbed_answer``,
    ``own_sample``).

    :param register: ``register(name, factory, options=None)``; the factory returns a
        :class:`cgrpo.interfaces.WrongAnswer`.
    """


@hookspec
def register_observers(register: Register) -> None:
    """Register observers: trackers a recipe names in its ``observers:`` list (no
    built-ins; ``plugins/cgrpo-tensorboard`` and ``plugins/cgrpo-wandb`` are examples).

    An observer is built with its ``Options`` and a build context, on the main process
    only, and implements :class:`cgrpo.interfaces.Observer`.
    """


@hookspec
def on_run_start(run_dir: str, recipe: dict[str, Any]) -> None:
    """Observe the start of a training run (loggers, trackers).

    :param run_dir: the run's output directory.
    :param recipe: the resolved recipe as plain data (secrets are never in it).
    """


@hookspec
def on_step_end(step: int, metrics: dict[str, float]) -> None:
    """Observe one finished training step.

    :param step: the 1-based step just finished.
    :param metrics: that step's metrics, ``area/name`` keys, as written to metrics.jsonl.
    """


@hookspec
def on_run_end(run_dir: str, status: str) -> None:
    """Observe the end of a run.

    :param run_dir: the run's output directory.
    :param status: ``"completed"``, ``"interrupted"`` or ``"failed"``.
    """
