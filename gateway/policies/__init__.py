"""Rate-limit and abuse policies: the YAML language, loading, linting, hot reload."""
