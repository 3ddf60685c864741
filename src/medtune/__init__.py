"""medtune: raw Chinese medical data → fine-tuned, evaluated, served medical LLM."""

__version__ = "0.1.0"
