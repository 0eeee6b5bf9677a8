"""VQ runs: training (train), whole-split metrics (evaluate), loading a run's model (load), and
the training loop's helpers: the non-finite guard (guard), CUDA graphs (graphs), compile (speed)."""
