"""What a run leaves behind: merged weights, LoRA adapters, model cards, uploads."""
