"""Where hashed agent keys live: a YAML file (GitOps) or Redis."""
