"""Training: datasets, losses and the Accelerate loops (base, meta, super-resolution, few-shot)."""
