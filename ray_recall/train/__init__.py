"""Training: the per-worker loop (plain torch) and the Ray Train wrapper."""
