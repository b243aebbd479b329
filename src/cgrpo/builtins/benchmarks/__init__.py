"""Built-in benchmarks, registered as the ``builtins.benchmarks`` plugin: the paper's nine
presets, ``verl`` (a verl-format validation file, one metric set per source), ``rows``
(any file, every field set by the recipe) and ``arithmetic-test``."""

from __future__ import annotations

from typing import Any

from cgrpo.builtins.benchmarks.arithmetic import ArithmeticBenchmark
from cgrpo.builtins.benchmarks.benchmark import RowBenchmark, preset_options
from cgrpo.builtins.benchmarks.presets import PRESETS
from cgrpo.hookspecs import hookimpl


def _factory(name: str, summary: str, options: Any):
    def build(opts: Any, context: Any = None) -> RowBenchmark:
        return RowBenchmark(opts, context, name=name)

    build.__doc__ = summary
    build.Options = options  # type: ignore[attr-defined]
    return build


@hookimpl
def register_benchmarks(register):
    for name, preset in PRESETS.items():
        settings = {k: v for k, v in preset.items() if k != "summary"}
        options = preset_options(name, **settings)
        register(name, _factory(name, preset["summary"], options), options=options)
    summary = "any JSONL/JSON/Parquet/CSV file or hub dataset, every field set in the recipe"
    register("rows", _factory("rows", summary, RowBenchmark.Options), options=RowBenchmark.Options)
    register("arithmetic-test", ArithmeticBenchmark)
