"""abliterate: remove the refusal direction from the weights of open-weight chat models."""

__version__ = "0.1.0"
