"""Inference: one engine contract behind every front-end (terminal chat, API, web page, reports)."""
