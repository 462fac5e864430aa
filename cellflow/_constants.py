"""Keys this package writes into AnnData objects, in one place."""

UNS_KEY = "cellflow"  # adata.uns[UNS_KEY]: the setup recorded by cf.pp.setup
LATENT_KEY = "X_cellflow"  # adata.obsm[LATENT_KEY]: latent representation
MIN_CONTROL_CELLS = 10  # fewer control cells cannot anchor a source distribution
