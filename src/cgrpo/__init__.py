"""cgrpo: Critique-GRPO training for reasoning language models.

The public surface most users touch is the ``cgrpo`` command. Library users can import the
pure algorithm functions from :mod:`cgrpo.algo.loss`, :mod:`cgrpo.algo.advantages` and
:mod:`cgrpo.algo.mixing`, and write plugins against :mod:`cgrpo.hookspecs`.
"""

from cgrpo.hookspecs import hookimpl

__version__ = "0.1.0"
__all__ = ["__version__", "hookimpl"]
