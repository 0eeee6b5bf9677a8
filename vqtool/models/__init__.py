"""Networks only, no files: their torch-free configurations (config), the quantizer, the
VQ-VAE (vqvae), the prior's transformer and its one-position coding steps (steps)."""
