"""GANs and GAN-latent image compression in JAX/Flax.

- `models_dcgan`: DCGAN generator/discriminator for 28/32/64 px (flax.linen).
- `models_pgan`: pytorch_GAN_zoo's Progressive GAN generator; `pgan_import` converts its
  `.pth` files (`python -m gan_jax.pgan_import IN.pth OUT.npz`).
- `generators`: generator checkpoints (one `.npz`: params + JSON config) and identity hash.
- `latent_search`: the compiled, batched, sharded latent optimiser (SGD/Adam, restarts).
- `fileformat`: the `.ganz` container; `compress` / `decompress`: library and CLIs.
- `report`: bits per pixel, ratios, PSNR and the JPEG-at-same-size baseline.
- `train`, `main`: DCGAN training (`python -m gan_jax.main --config configs/gan.py:dcgan,mnist`);
  `fid_vit`: the FID on ViT pre-logits it logs over training (real statistics cached).

Library use (what `python -m gan_jax.compress` does):

    g = generators.load('generator.npz')
    target = compress.prepare(image_uint8, g, resize=True)           # [S, S, C] uint8
    files, recons, result = compress.compress(target[None], g, quantization='8bit')
    image = decompress.decompress(files[0], g)                        # == recons[0]
"""
