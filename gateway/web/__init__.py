"""The HTTP layer: app factory, middlewares, thin handlers."""
