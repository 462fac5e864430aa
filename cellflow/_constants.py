"""Keys this package writes into AnnData objects, and the allowed values of its options, in one place.

Nothing here imports torch: the command line reads its ``choices`` from this module.
"""

UNS_KEY = "cellflow"  # adata.uns[UNS_KEY]: the setup recorded by cf.pp.setup
LATENT_KEY = "X_cellflow"  # adata.obsm[LATENT_KEY]: latent representation
MIN_CONTROL_CELLS = 10  # fewer control cells cannot anchor a source distribution

LIKELIHOODS = ("nb", "zinb", "poisson", "normal")  # scvi-tools' gene likelihoods cellflow supports
SOURCES = ("control", "noise")  # where the flow starts
SOURCE_SHIFTS = ("measured", "additive", "none")  # where it starts relative to latent arithmetic
COMBINATION_OFFSETS = ("sum", "fit")  # how an unseen combination's gene offsets add up
TOKEN_EMBEDDINGS = ("learned", "expression", "table")
POOLINGS = ("sum", "mean", "attention")
SOLVER_METHODS = ("euler", "heun", "rk4", "dopri5")  # fixed-step ones first; dopri5 is adaptive
COUPLINGS = ("ot", "minibatch_ot", "random")
PRECISIONS = ("32-true", "bf16-mixed", "16-mixed")  # Lightning's names
PRESET_NAMES = ("fast", "default", "long")  # cellflow.models.PRESETS, in order of training length
