"""Robustar training: export annotations, decode brush masks, paired fine-tuning, versioned checkpoints."""
