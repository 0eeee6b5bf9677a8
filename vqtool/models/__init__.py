"""Networks only, no files: their torch-free configurations (config), the quantizers (quantizer:
vector quantization; fsq: finite scalar quantization; residual: stages of vector quantizers),
the VQ-VAE (vqvae), the prior's transformer and its one-position coding steps (steps)."""
