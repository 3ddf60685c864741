"""Data: sources → messages (formats), the dataset registry, chat templates, encoding."""
