"""Built-in tasks (data sources), registered as the ``builtins.tasks`` plugin."""

from cgrpo.builtins.tasks.arithmetic import ArithmeticTask
from cgrpo.builtins.tasks.files import CSVTask, HFDatasetTask, JSONLTask, ParquetTask
from cgrpo.builtins.tasks.mixture import MixtureTask
from cgrpo.hookspecs import hookimpl


@hookimpl
def register_tasks(register):
    register("jsonl", JSONLTask)
    register("csv", CSVTask)
    register("parquet", ParquetTask)
    register("hf_dataset", HFDatasetTask)
    register("arithmetic", ArithmeticTask)
    register("mixture", MixtureTask)
