import numpy as np
import pytest
from scipy import sparse
from scipy.spatial.distance import cdist

from cellflow.metrics import discrimination_score, top_de_overlap

# ---- discrimination score ------------------------------------------------------------------------


def test_discrimination_perfect_prediction_is_zero():
    truth = np.random.default_rng(0).normal(size=(6, 10))
    for metric in ("l1", "l2", "cosine"):
        np.testing.assert_array_equal(discrimination_score(truth, truth, metric=metric), np.zeros(6))


def test_discrimination_reversed_hand_example():
    # 1-D profiles 0, 1, 2, 3 predicted in reverse order (3, 2, 1, 0):
    # pred 3 for true 0: distances to trues 0..3 are 3, 2, 1, 0 -> all 3 others closer -> 3/3 = 1
    # pred 2 for true 1: distances 2, 1, 0, 1 -> one closer (true 2), one tie (true 3) -> 1.5/3 = 0.5
    # and symmetrically for the last two
    truth = np.arange(4.0)[:, None]
    pred = truth[::-1]
    np.testing.assert_allclose(discrimination_score(pred, truth), [1.0, 0.5, 0.5, 1.0])


def test_discrimination_metrics_differ_on_scaled_predictions():
    # Predictions are 10x the truth: cosine sees a perfect match. Under L2, pred 0 = [10, 0] is 9 from
    # its truth [1, 0] but sqrt(50) ~ 7.07 from [5, 5] -> score 1; pred 1 = [50, 50] is 63.6 from its
    # truth and 70.0 from [1, 0] -> 0. Under L1: 9 vs 10 and 90 vs 99 -> both 0.
    truth = np.array([[1.0, 0.0], [5.0, 5.0]])
    pred = 10 * truth
    np.testing.assert_array_equal(discrimination_score(pred, truth, metric="cosine"), [0.0, 0.0])
    np.testing.assert_array_equal(discrimination_score(pred, truth, metric="l2"), [1.0, 0.0])
    np.testing.assert_array_equal(discrimination_score(pred, truth, metric="l1"), [0.0, 0.0])


def test_discrimination_matches_brute_force_ranks():
    rng = np.random.default_rng(1)
    truth, pred = rng.normal(size=(8, 5)), rng.normal(size=(8, 5))
    for metric, scipy_name in (("l1", "cityblock"), ("l2", "euclidean"), ("cosine", "cosine")):
        expected = []
        for i in range(8):
            own = cdist(pred[i : i + 1], truth[i : i + 1], scipy_name)[0, 0]
            others = [cdist(pred[i : i + 1], truth[j : j + 1], scipy_name)[0, 0] for j in range(8) if j != i]
            expected.append(sum(d < own for d in others) / 7)
        np.testing.assert_allclose(discrimination_score(sparse.csr_matrix(pred), truth, metric=metric), expected)


def test_discrimination_random_predictions_average_one_half():
    rng = np.random.default_rng(2)
    scores = [discrimination_score(rng.normal(size=(10, 6)), rng.normal(size=(10, 6))) for _ in range(300)]
    assert np.mean(scores) == pytest.approx(0.5, abs=0.02)


def test_discrimination_errors():
    with pytest.raises(ValueError, match="conditions"):
        discrimination_score(np.ones((3, 2)), np.ones((4, 2)))
    with pytest.raises(ValueError, match="same number of genes"):
        discrimination_score(np.ones((3, 2)), np.ones((3, 5)))
    with pytest.raises(ValueError, match="at least 2 conditions"):
        discrimination_score(np.ones((1, 2)), np.ones((1, 2)))
    with pytest.raises(ValueError, match="metric"):
        discrimination_score(np.eye(2), np.eye(2), metric="l3")
    with pytest.raises(ValueError, match="all-zero row"):
        discrimination_score(np.zeros((2, 2)), np.eye(2), metric="cosine")
    with pytest.raises(ValueError, match="convention"):
        discrimination_score(np.eye(2), np.eye(2), convention="vcc")
    with pytest.raises(ValueError, match="boolean conditions x genes"):
        discrimination_score(np.eye(2), np.eye(2), exclude=np.zeros((2, 3), dtype=bool))
    with pytest.raises(ValueError, match="boolean conditions x genes"):
        discrimination_score(np.eye(2), np.eye(2), exclude=np.zeros((2, 2)))
    with pytest.raises(ValueError, match="every gene"):
        discrimination_score(np.eye(2), np.eye(2), exclude=np.array([[True, True], [False, False]]))


def test_discrimination_cell_eval_convention_by_hand():
    # 1-D profiles 0, 1, 3, 7 predicted as 0.4, 3.6, 3.1, 5.5 (no tied distances):
    # pred 0.4 for true 0: distances 0.4, 0.6, 2.6, 6.6 -> rank 0 -> 1 - 0/4 = 1
    # pred 3.6 for true 1: distances 3.6, 2.6, 0.6, 3.4 -> true 1 is second (rank 1) -> 1 - 1/4 = 0.75
    # pred 3.1 for true 3: rank 0 -> 1;  pred 5.5 for true 7: distances 5.5, 4.5, 2.5, 1.5 -> rank 0 -> 1
    truth = np.array([[0.0], [1.0], [3.0], [7.0]])
    pred = np.array([[0.4], [3.6], [3.1], [5.5]])
    np.testing.assert_allclose(discrimination_score(pred, truth, convention="cell_eval"), [1.0, 0.75, 1.0, 1.0])
    # The same ranks in cellflow's convention: rank / (n - 1), lower is better.
    np.testing.assert_allclose(discrimination_score(pred, truth), [0.0, 1 / 3, 0.0, 0.0])


def test_discrimination_exclude_leaves_out_the_target_gene():
    # Condition "A" knocks gene A down and moves gene C by 1; "B" moves gene C by 1.2. The prediction
    # for A gets gene C right but misses the knock-down: with gene A counted, B's true profile is
    # closer to it than A's; with each condition's own gene left out, it is exact.
    genes = np.array(["A", "B", "C"])
    conditions = np.array(["A", "B"])
    truth = np.array([[-5.0, 0.0, 1.0], [0.0, 0.0, 1.2]])
    pred = np.array([[0.0, 0.0, 1.0], [0.0, 0.0, 1.2]])
    exclude = genes[None, :] == conditions[:, None]
    np.testing.assert_allclose(discrimination_score(pred, truth, convention="cell_eval"), [0.5, 1.0])
    np.testing.assert_allclose(discrimination_score(pred, truth, exclude=exclude, convention="cell_eval"), [1.0, 1.0])


def test_discrimination_cell_eval_cosine_takes_a_zero_profile_as_distance_one():
    # scikit-learn's cosine distance (cell-eval's): an all-zero prediction is at distance 1 from every
    # true profile, so the tie keeps argsort's order; cellflow's convention refuses it.
    truth = np.array([[1.0, 0.0], [0.0, 1.0]])
    pred = np.array([[1.0, 0.1], [0.0, 0.0]])
    scores = discrimination_score(pred, truth, metric="cosine", convention="cell_eval")
    assert scores[0] == 1.0 and scores[1] in (0.5, 1.0)


# ---- top DE gene overlap -------------------------------------------------------------------------


def _log_expression(seed, n_cells=60, n_genes=60, up=(), down=()):
    # Log-normalised-like values; signal genes move by 2 (20 noise standard deviations apart in mean).
    x = np.random.default_rng(seed).normal(loc=2.0, scale=0.3, size=(n_cells, n_genes))
    x[:, list(up)] += 2.0
    x[:, list(down)] -= 1.5
    return x


@pytest.mark.parametrize("method", ["wilcoxon", "t-test"])
def test_top_de_overlap_identical_is_one(method):
    control = _log_expression(0)
    truth = _log_expression(1, up=range(10), down=range(10, 20))
    assert top_de_overlap(truth, truth, control, method=method) == 1.0


def test_top_de_overlap_disjoint_and_partial_signal():
    control = _log_expression(0)
    truth = _log_expression(1, up=range(20, 40))
    # disjoint: prediction moves genes 0-19, truth genes 20-39 -> no shared top-20 gene
    assert top_de_overlap(_log_expression(2, up=range(20)), truth, control) == 0.0
    # prediction moves genes 30-49: shares 30-39, i.e. 10 of the top 20
    assert top_de_overlap(_log_expression(2, up=range(30, 50)), truth, control) == 0.5


def test_top_de_overlap_counts_down_regulated_genes_only_with_rankby_abs():
    # Prediction gets the down-regulated genes 0-9 right and misses the up-regulated genes 10-19.
    control = _log_expression(0)
    truth = _log_expression(1, down=range(10), up=range(10, 20))
    pred = _log_expression(2, down=range(10), up=range(40, 50))
    assert top_de_overlap(pred, truth, control, n_genes=20) == 0.5
    # ranked by signed score, the top 10 are the up-regulated genes, which differ
    assert top_de_overlap(pred, truth, control, n_genes=10, rankby_abs=False) == 0.0


def test_top_de_overlap_accepts_anndata_and_sparse():
    import anndata as ad

    control = _log_expression(0)
    truth = _log_expression(1, up=range(20, 40))
    pred = _log_expression(2, up=range(30, 50))
    names = [f"gene{i}" for i in range(60)]
    as_adata = ad.AnnData(sparse.csr_matrix(pred))
    as_adata.var_names = names
    truth_adata = ad.AnnData(truth)
    truth_adata.var_names = names
    assert top_de_overlap(as_adata, truth_adata, sparse.csr_matrix(control)) == 0.5
    truth_adata.var_names = names[::-1]
    with pytest.raises(ValueError, match="var_names"):
        top_de_overlap(as_adata, truth_adata, control)


def test_top_de_overlap_errors():
    control = _log_expression(0)
    with pytest.raises(ValueError, match="same number of genes"):
        top_de_overlap(control[:, :50], control, control)
    with pytest.raises(ValueError, match="n_genes"):
        top_de_overlap(control, control, control, n_genes=61)
    with pytest.raises(ValueError, match="at least 2 cells"):
        top_de_overlap(control[:1], control, control)
