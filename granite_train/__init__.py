"""granite-train: train and fine-tune Granite-Speech-class models."""

__version__ = "0.1.0"
