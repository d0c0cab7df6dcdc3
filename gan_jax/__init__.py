"""GANs and GAN-latent image compression in JAX/Flax."""
