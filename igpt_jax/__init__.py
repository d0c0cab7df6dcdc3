"""Image GPT (Chen et al., 2020) in JAX/Flax."""
