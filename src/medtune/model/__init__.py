"""Models: loading (HF folder, hub id, GGUF package, tiny local builds) and training methods."""
