"""PyTorch side of memlm: the GPT, memory techniques, training, evaluation and generation."""
