"""Built-in components. Each submodule is a plugin registered through the same hooks a
third-party package uses, so nothing here is privileged."""
