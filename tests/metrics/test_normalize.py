import numpy as np
import pytest
from scipy import sparse

from cellflow.metrics import log_normalize, pca_project


def _counts(seed=0, shape=(30, 12)):
    return np.random.default_rng(seed).poisson(2.0, size=shape).astype(np.float32)


def test_log_normalize_hand_example():
    # cell 1: totals 1 + 3 = 4, target 4 -> counts unchanged -> [log 2, log 4]
    # cell 2: totals 2 + 6 = 8, target 4 -> [1, 3]       -> [log 2, log 4]
    counts = np.array([[1.0, 3.0], [2.0, 6.0]])
    expected = np.log([[2.0, 4.0], [2.0, 4.0]])
    np.testing.assert_allclose(log_normalize(counts, target_sum=4.0), expected)


@pytest.mark.filterwarnings("ignore:Some cells have zero counts")
@pytest.mark.parametrize("target_sum", [1e4, None])
def test_log_normalize_matches_scanpy(target_sum):
    import anndata as ad
    import scanpy as sc

    counts = _counts()
    counts[3] = 0  # an empty cell must stay zero in both
    adata = ad.AnnData(counts.copy())
    sc.pp.normalize_total(adata, target_sum=target_sum)
    sc.pp.log1p(adata)
    result = log_normalize(counts, target_sum=target_sum)
    np.testing.assert_allclose(result, adata.X, rtol=1e-5, atol=1e-6)
    assert np.all(result[3] == 0)


def test_log_normalize_sparse_and_dtype():
    counts = _counts()
    dense = log_normalize(counts)
    from_sparse = log_normalize(sparse.csr_matrix(counts))
    assert isinstance(from_sparse, np.ndarray)
    np.testing.assert_allclose(from_sparse, dense)
    assert dense.dtype == np.float32
    assert log_normalize(counts.astype(np.int64)).dtype == np.float64


def test_log_normalize_bad_input():
    with pytest.raises(ValueError, match="negative"):
        log_normalize(np.array([[1.0, -1.0]]))
    with pytest.raises(ValueError, match="target_sum"):
        log_normalize(np.ones((2, 2)), target_sum=0)
    with pytest.raises(ValueError, match="2-D"):
        log_normalize(np.ones(3))


def _gram_after_numpy_pca(reference, other, n_comps):
    # Independent PCA: SVD of the reference centred with its own mean; Gram matrices are sign-free.
    mean = reference.mean(axis=0)
    _, _, vt = np.linalg.svd(reference - mean, full_matrices=False)
    basis = vt[:n_comps].T
    return ((other - mean) @ basis) @ ((reference - mean) @ basis).T


def test_pca_project_matches_numpy_svd():
    rng = np.random.default_rng(1)
    reference = rng.normal(size=(40, 15))
    other = rng.normal(loc=0.5, size=(25, 15))
    ref_pcs, other_pcs = pca_project(reference, other, n_comps=5)
    assert ref_pcs.shape == (40, 5) and other_pcs.shape == (25, 5)
    np.testing.assert_allclose(other_pcs @ ref_pcs.T, _gram_after_numpy_pca(reference, other, 5), atol=1e-8)
    np.testing.assert_allclose(ref_pcs @ ref_pcs.T, _gram_after_numpy_pca(reference, reference, 5), atol=1e-8)


def test_pca_project_centres_with_reference_mean():
    # A shifted copy of the reference projects to the reference PCs plus the projected shift,
    # which it would not if each set were centred with its own mean.
    rng = np.random.default_rng(2)
    reference = rng.normal(size=(30, 8))
    shift = np.full(8, 2.0)
    ref_pcs, same_pcs, shifted_pcs = pca_project(reference, reference, reference + shift, n_comps=3)
    np.testing.assert_allclose(same_pcs, ref_pcs, atol=1e-10)
    offset = shifted_pcs - ref_pcs
    np.testing.assert_allclose(offset, np.broadcast_to(offset[0], offset.shape), atol=1e-10)
    assert np.linalg.norm(offset[0]) > 0.1


def test_pca_project_clips_components_and_keeps_distances():
    # 5 cells span at most 4 centred dimensions: n_comps=50 -> 4, and all pairwise distances survive.
    from scipy.spatial.distance import pdist

    reference = np.random.default_rng(3).normal(size=(5, 10))
    (ref_pcs,) = pca_project(sparse.csr_matrix(reference), n_comps=50)
    assert ref_pcs.shape == (5, 4)
    np.testing.assert_allclose(pdist(ref_pcs), pdist(reference), rtol=1e-8)


def test_pca_project_errors():
    with pytest.raises(ValueError, match="same number of genes"):
        pca_project(np.ones((5, 4)), np.ones((5, 3)))
    with pytest.raises(ValueError, match="at least 2 cells"):
        pca_project(np.ones((1, 4)))
    with pytest.raises(ValueError, match="n_comps"):
        pca_project(np.ones((5, 4)), n_comps=0)
