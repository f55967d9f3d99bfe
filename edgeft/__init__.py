"""edgeft: fine-tune a base LLM on your examples and ship verified edge artifacts."""

__version__ = "0.1.0"
