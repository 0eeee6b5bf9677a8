"""Image files in and out: reading any format torchvision or Pillow knows (read), fitting an
image to a size by crop or stretch (fit), the model's pixel convention and padding (pixels),
and a fast PNG writer with grids (png)."""
