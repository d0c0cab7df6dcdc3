"""Vision Transformer (Dosovitskiy et al., 2020) in JAX/Flax, compatible with the official
google-research/vision_transformer checkpoints and configs."""
