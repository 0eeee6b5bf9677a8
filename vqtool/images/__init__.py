"""Image files in and out: reading any format torchvision or Pillow knows (read), the model's
pixel convention and padding (pixels), and a fast PNG writer with grids (png)."""
