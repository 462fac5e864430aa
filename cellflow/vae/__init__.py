"""The scvi-tools VAE that defines cellflow's latent space."""

from ._scvi import LatentVAE, VAEConfig

__all__ = ["LatentVAE", "VAEConfig"]
