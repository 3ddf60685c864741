"""Evaluation: reports on tuned models."""
