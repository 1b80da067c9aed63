"""MLX backend: mlx + mlx-lm tuner layers."""
