"""A security gateway for public AI-agent chat."""

__version__ = "0.1.0"
