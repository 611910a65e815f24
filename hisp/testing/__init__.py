"""Public test helpers: a development PKI builder and fixture loaders."""
