"""Prior runs, mirroring vq/: the VQ run's codes kept for the prior (data), training (train),
loading (load), test figures (evaluate) and sampling (sample)."""
