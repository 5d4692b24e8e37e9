"""Prompt methods: one module per method, each a config dataclass and a model wrapper."""
