"""The .vqc code file and what fills it: the file format (vqc), the entropy coder that takes a
prior handed to it and never loads runs (entropy), images to codes and back (pipeline, inputs,
names), your images through the codes and back with each one's PSNR and bits (roundtrip), and
the real rate-distortion figures beside JPEG, WebP and AVIF (ratedistortion)."""
