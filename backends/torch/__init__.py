"""PyTorch backend: transformers + PEFT."""
