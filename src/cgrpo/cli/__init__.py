"""The ``cgrpo`` command line."""
