"""Creating the tiny model is atomic: a SIGKILL while it is written leaves nothing at
``model.path`` that looks like a model (it used to leave config.json without weights, and
the loader, which looks for config.json, then never got past it)."""

import os
import subprocess
import sys

import pytest

from cgrpo.model.faults import CRASH_ENV

CREATE = "from cgrpo.model.tiny import create_tiny_model; create_tiny_model({path!r}, num_layers=1)"


def test_a_kill_while_the_model_is_written_leaves_no_model_and_a_retry_builds_it(tmp_path):
    target = tmp_path / "tiny"
    env = {**os.environ, CRASH_ENV: "create:0"}  # SIGKILL with config.json just written
    killed = subprocess.run([sys.executable, "-c", CREATE.format(path=str(target))], env=env)
    assert killed.returncode == -9
    assert not target.exists()  # not config.json without weights: nothing
    leftovers = list(tmp_path.glob(".tiny.creating-*"))
    assert len(leftovers) == 1 and (leftovers[0] / "config.json").is_file()

    from cgrpo.model.tiny import create_tiny_model

    create_tiny_model(target, num_layers=1)  # a later start creates it whole
    assert (target / "config.json").is_file() and (target / "model.safetensors").is_file()
    assert (target / "tokenizer.json").is_file()
    assert list(tmp_path.glob(".tiny.creating-*")) == []  # the killed one's is cleared


def test_a_directory_with_something_else_in_it_is_not_replaced(tmp_path):
    from cgrpo.errors import TrainingError
    from cgrpo.model.tiny import create_tiny_model

    target = tmp_path / "tiny"
    target.mkdir()
    (target / "notes.txt").write_text("mine")
    with pytest.raises(TrainingError, match="holds no model"):
        create_tiny_model(target, num_layers=1)
    assert (target / "notes.txt").read_text() == "mine"
