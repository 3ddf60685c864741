"""Inference: one ChatEngine behind every front-end (terminal chat, reports; later API and web)."""
