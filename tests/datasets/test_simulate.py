import anndata as ad
import numpy as np
import pandas as pd
import pytest
from scipy import sparse
from scipy.special import expit

from cellflow.datasets import simulate_perturbseq, true_means
from cellflow.datasets._grn import GeneRegulatoryNetwork, sample_network

SMALL = {"n_genes": 100, "seed": 3}


@pytest.fixture(scope="module")
def adata():
    return simulate_perturbseq(4000, **SMALL)


@pytest.fixture(scope="module")
def log_truth(adata):
    return np.log(true_means(adata))


def _lfc(log_truth, perturbation, cell_type, time=np.inf):
    return log_truth.loc[(perturbation, cell_type, time)] - log_truth.loc[("control", cell_type, time)]


def _combinations(adata):
    return [p for p in adata.obs["perturbation"].cat.categories if "+" in p]


# --- the network engine, against hand computations -------------------------------------------


def _tiny_network():
    # gene 0 (regulator) activates gene 1 with weight 2 and represses gene 2 with weight -3
    weights = sparse.csr_array(np.array([[0.0, 2.0, -3.0]]))
    return GeneRegulatoryNetwork(
        regulators=np.array([0]),
        weights=weights,
        basal=np.array([[0.5, -1.0, 1.0]]),
        max_rate=np.array([2.0, 1.0, 3.0]),
        decay=np.array([1.0, 0.5, 2.0]),
        half_response=np.array([0.8]),
    )


def test_steady_state_matches_hand_computation():
    net = _tiny_network()
    factor = np.array([[1.0, 1.0, 1.0], [0.1, 1.0, 1.0]])  # control; knockdown of the regulator
    state = net.steady_state(np.repeat(net.basal, 2, axis=0), factor)
    for row, f in enumerate(factor[:, 0]):
        x0 = f * 2.0 * expit(0.5) / 1.0
        hill = (x0 / 0.8) ** 2 / (1 + (x0 / 0.8) ** 2)
        expected = [x0, 1.0 * expit(-1.0 + 2.0 * hill) / 0.5, 3.0 * expit(1.0 - 3.0 * hill) / 2.0]
        np.testing.assert_allclose(state[row], expected, rtol=1e-12)


def test_dynamics_reach_the_steady_state_and_start_where_told():
    net = sample_network(
        np.random.default_rng(0), 60, 2, regulator_fraction=0.2, regulators_per_gene=3.0, cell_type_scale=1.0
    )
    factor = np.ones((2, 60))
    factor[1, net.regulators[:3]] = 0.1
    basal = np.repeat(net.basal[:1], 2, axis=0)
    steady = net.steady_state(basal, factor)
    np.testing.assert_allclose(net.velocity(steady, basal, factor), 0.0, atol=1e-10)
    x0 = net.steady_state(basal, np.ones((2, 60)))
    path = net.integrate(x0, basal, factor, np.array([1e-3, 400.0, np.inf]))
    np.testing.assert_allclose(path[0], x0, rtol=1e-2)  # barely moved after a few seconds
    np.testing.assert_allclose(path[1], steady, rtol=1e-6)  # long after: at the steady state
    np.testing.assert_array_equal(path[2], steady)


def test_network_is_hierarchical_and_sparse():
    net = sample_network(
        np.random.default_rng(1), 300, 2, regulator_fraction=0.15, regulators_per_gene=3.0, cell_type_scale=1.0
    )
    among_regulators = net.weights[:, net.regulators].toarray()
    assert np.allclose(np.tril(among_regulators), 0.0)  # regulator r only hears regulators before it: no cycles
    assert net.regulators.size == 45
    inputs_per_gene = (net.weights.toarray() != 0).sum(axis=0)
    assert 2.0 < inputs_per_gene.mean() < 3.5


# --- the AnnData it returns ---------------------------------------------------------------------


def test_same_seed_same_data_other_seed_other_data(adata):
    again = simulate_perturbseq(4000, **SMALL)
    assert (adata.X != again.X).nnz == 0
    pd.testing.assert_frame_equal(adata.obs, again.obs)
    other = simulate_perturbseq(4000, n_genes=100, seed=4)
    assert (adata.X != other.X).nnz > 0


def test_counts_are_csr_nonnegative_integers(adata):
    assert sparse.issparse(adata.X) and adata.X.format == "csr" and adata.X.dtype == np.float32
    values = adata.X.data
    assert values.min() >= 0 and np.array_equal(values, np.round(values))
    total = np.asarray(adata.X.sum(axis=1)).ravel()
    assert 2000 < np.median(total) < 4500  # library median 3000


def test_names_columns_and_categories(adata):
    assert list(adata.var_names[:3]) == ["G0000", "G0001", "G0002"]
    assert adata.obs_names.is_unique
    for key in ("perturbation", "cell_type", "dose"):
        assert isinstance(adata.obs[key].dtype, pd.CategoricalDtype)
    assert adata.obs["time"].dtype == float
    assert set(adata.obs["cell_type"].cat.categories) == {"type_0", "type_1"}
    labels = adata.obs["perturbation"].cat.categories
    assert labels[0] == "control" and len(labels) == 1 + 12 + 12
    for label in labels[1:]:
        tokens = label.split("+")
        assert tokens == sorted(tokens) and set(tokens) <= set(adata.var_names)
    assert set(adata.obs.loc[adata.obs["perturbation"] == "control", "dose"]) == {"0"}
    assert set(adata.obs.loc[adata.obs["perturbation"] != "control", "dose"]) == {"1", "1+1"}


def test_controls_everywhere_and_balanced_design(adata):
    counts = adata.obs.groupby(["perturbation", "cell_type", "time"], observed=False).size()
    assert (counts > 0).all()  # every perturbation in every cell type (and time)
    assert (counts.xs("control", level="perturbation") >= 0.15 * adata.n_obs / 2 - 1).all()
    perturbed = counts.drop("control", level="perturbation")
    assert perturbed.max() - perturbed.min() <= 1
    assert (adata.obs["perturbation"] == "control").mean() >= 0.15


def test_truth_shape_rows_and_table(adata):
    truth = adata.uns["simulation"]
    assert truth["true_mean"].shape == (len(truth["conditions"]), adata.n_vars) == (2 * 25, 100)
    np.testing.assert_allclose(truth["true_mean"].sum(axis=1), 1.0, rtol=1e-10)
    observed = set(adata.obs[["perturbation", "cell_type", "dose", "time"]].astype(str).itertuples(index=False))
    assert observed == set(truth["conditions"].astype(str).itertuples(index=False))
    table = true_means(adata)
    assert table.index.names == ["perturbation", "cell_type", "time"]
    assert list(table.columns) == list(adata.var_names)
    assert truth["params"]["n_genes"] == 100 and truth["params"]["seed"] == 3


def test_empirical_means_match_truth():
    data = simulate_perturbseq(12000, n_genes=100, n_perturbations=4, n_combinations=2, seed=5)
    table = true_means(data)
    keys = ["perturbation", "cell_type", "time"]
    summed = (
        pd.DataFrame(data.X.toarray(), columns=data.var_names).groupby([data.obs[k].to_numpy() for k in keys]).sum()
    )
    empirical = summed.div(summed.sum(axis=1), axis=0)
    truth = table.loc[empirical.index]
    per_condition = [np.corrcoef(empirical.loc[i], truth.loc[i])[0, 1] for i in empirical.index]
    assert min(per_condition) > 0.95
    # ~900 control cells per cell type: well-expressed genes should hit their truth within sampling error
    for cell_type in ("type_0", "type_1"):
        ctrl = ("control", cell_type, np.inf)
        expressed = truth.loc[ctrl] > 0.005
        log_ratio = np.log(empirical.loc[ctrl][expressed] / truth.loc[ctrl][expressed])
        assert expressed.sum() > 20 and np.abs(log_ratio).max() < 0.1
    # perturbation effects too, not just the shared expression level
    for cell_type in ("type_0", "type_1"):
        ctrl, pert = ("control", cell_type, np.inf), (table.index[2][0], cell_type, np.inf)
        emp = np.log(empirical.loc[pert] + 1e-4) - np.log(empirical.loc[ctrl] + 1e-4)
        tru = np.log(truth.loc[pert] + 1e-4) - np.log(truth.loc[ctrl] + 1e-4)
        assert np.corrcoef(emp, tru)[0, 1] > 0.8


def test_combinations_are_not_additive(adata, log_truth):
    interacting, synergy, buffering = 0, 0, 0
    combinations = _combinations(adata)
    for combo in combinations:
        tokens = combo.split("+")
        strongest = 0.0
        for cell_type in ("type_0", "type_1"):
            observed = _lfc(log_truth, combo, cell_type).drop(tokens)
            additive = sum(_lfc(log_truth, t, cell_type) for t in tokens).drop(tokens)
            strongest = max(strongest, float(np.abs(observed - additive).max()))
            synergy += int(((observed.abs() > additive.abs() + 0.5) & (np.sign(observed) == np.sign(additive))).sum())
            buffering += int((observed.abs() < additive.abs() - 0.5).sum())
        interacting += strongest > 0.3
    assert interacting >= 2 / 3 * len(combinations)
    assert synergy > 0 and buffering > 0


def test_cell_types_differ(log_truth):
    control = log_truth.xs("control", level="perturbation")
    assert np.abs(control.loc[("type_0", np.inf)] - control.loc[("type_1", np.inf)]).mean() > 0.3
    single = log_truth.index.get_level_values(0)[1]
    response_0, response_1 = _lfc(log_truth, single, "type_0"), _lfc(log_truth, single, "type_1")
    assert not np.allclose(response_0, response_1, atol=0.1)  # same perturbation, context-specific response


def test_time_course_moves_away_from_control_towards_steady_state():
    times = (1.0, 4.0, 12.0, 48.0)
    data = simulate_perturbseq(2000, n_genes=60, times=(*times, np.inf), n_combinations=4, seed=2)
    log_truth = np.log(true_means(data))
    assert sorted(data.obs["time"].unique()) == [*times, np.inf]
    control = log_truth.xs("control", level="perturbation")
    np.testing.assert_allclose(control.loc[("type_0", 1.0)], control.loc[("type_0", np.inf)], rtol=1e-8)
    steady_alone = np.log(true_means(simulate_perturbseq(2000, n_genes=60, n_combinations=4, seed=2)))
    for label in data.obs["perturbation"].cat.categories[1:]:
        lfc = {t: _lfc(log_truth, label, "type_0", t) for t in (*times, np.inf)}
        gap = [np.linalg.norm(lfc[t] - lfc[np.inf]) for t in times]
        assert all(a > b for a, b in zip(gap, gap[1:]))
        assert gap[-1] < 0.25 * gap[0]
        assert np.linalg.norm(lfc[48.0] - lfc[1.0]) > 0.5
        np.testing.assert_allclose(lfc[np.inf], _lfc(steady_alone, label, "type_0"), atol=1e-10)


def test_default_times_for_a_time_course():
    data = simulate_perturbseq(1500, n_genes=40, n_timepoints=3, n_perturbations=3, n_combinations=1, seed=0)
    assert sorted(data.obs["time"].unique()) == [2.0, 9.8, 48.0]
    assert data.obs.groupby("time")["perturbation"].apply(lambda s: (s == "control").sum()).min() > 0


@pytest.mark.parametrize("perturbation_type", ["knockdown", "activation", "mixed"])
def test_lower_dose_smaller_effect(perturbation_type):
    data = simulate_perturbseq(
        1500, n_genes=80, doses=(0.5, 1.0), perturbation_type=perturbation_type, n_combinations=3, seed=1
    )
    table = np.log(true_means(data))
    assert table.index.names == ["perturbation", "dose", "cell_type", "time"]
    modes = data.uns["simulation"]["perturbations"].set_index("target")["mode"]
    for target, mode in modes.items():
        ctrl = table.loc[("control", "0", "type_0", np.inf)]
        low = table.loc[(target, "0.5", "type_0", np.inf)] - ctrl
        high = table.loc[(target, "1", "type_0", np.inf)] - ctrl
        assert np.linalg.norm(low) < np.linalg.norm(high)
        assert (np.sign(high[target]) > 0) == (mode == "activation")
        assert abs(low[target]) < abs(high[target])


def test_combination_sizes_and_dose_tuples():
    data = simulate_perturbseq(
        3000,
        n_genes=60,
        n_perturbations=5,
        n_combinations=4,
        combination_size=(2, 3),
        doses=(0.5, 1.0),
        dose_combinations="all",
        seed=0,
    )
    conditions = data.uns["simulation"]["conditions"]
    sizes = conditions["perturbation"].str.count(r"\+") + 1
    assert set(sizes[conditions["perturbation"] != "control"]) == {1, 2, 3}
    perturbed = conditions["perturbation"] != "control"
    assert (conditions.loc[perturbed, "dose"].str.count(r"\+") == sizes[perturbed] - 1).all()
    assert set(conditions.loc[~perturbed, "dose"]) == {"0"}
    pairs = conditions.loc[sizes == 2, "dose"]
    assert {"0.5+0.5", "0.5+1", "1+0.5", "1+1"} <= set(pairs)
    assert len(conditions.loc[sizes == 3]) == 2 * 2 * 8  # 2 triples x 2 cell types x 2^3 dose tuples


def test_h5ad_round_trip(adata, tmp_path):
    path = tmp_path / "sim.h5ad"
    adata.write_h5ad(path)
    back = ad.read_h5ad(path)
    assert (back.X != adata.X).nnz == 0
    pd.testing.assert_frame_equal(true_means(back), true_means(adata))


def test_more_perturbations_than_regulators_fall_back_to_other_genes():
    data = simulate_perturbseq(800, n_genes=20, n_perturbations=15, n_combinations=2, seed=0)
    targets = data.uns["simulation"]["perturbations"]["target"]
    regulators = set(data.uns["simulation"]["network"]["regulator"])
    assert targets.is_unique and len(targets) == 15 and not set(targets) <= regulators
    assert regulators & set(targets)


def test_true_means_needs_a_simulation():
    with pytest.raises(ValueError, match="simulate_perturbseq"):
        true_means(ad.AnnData(np.zeros((2, 2))))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"perturbation_type": "knockout"}, "perturbation_type"),
        ({"doses": (0.0,)}, "doses"),
        ({"control_fraction": 1.0}, "control_fraction"),
        ({"combination_size": 1}, "combination_size"),
        ({"n_perturbations": 3, "n_combinations": 5}, "n_combinations"),
        ({"n_timepoints": 2, "times": (1.0, 2.0, 3.0)}, "n_timepoints"),
        ({"times": (-1.0,)}, "times"),
        ({"n_genes": 0}, "n_genes"),
        ({"doses": (1.0, 1.0)}, "doses"),
        ({"library_size": (3000.0, -1.0)}, "library_size"),
        ({"n_cells": 30}, "n_cells"),
    ],
)
def test_bad_arguments_raise(kwargs, match):
    kwargs = {"n_cells": 500, "n_genes": 40, **kwargs}
    with pytest.raises(ValueError, match=match):
        simulate_perturbseq(**kwargs)


# --- screens written to disk in chunks ----------------------------------------------------------

TO_DISK = {"n_cells": 9000, "n_genes": 60, "n_timepoints": 2, "doses": (0.5, 1.0), "seed": 2}  # 3 blocks of 4096


@pytest.fixture(scope="module")
def screen_in_memory():
    return simulate_perturbseq(**TO_DISK)


def _counts(adata):
    return adata.X if sparse.issparse(adata.X) else adata.X[0 : adata.n_obs]


@pytest.mark.parametrize("suffix", [".h5ad", ".zarr"])
def test_screen_on_disk_is_the_screen_in_memory(screen_in_memory, tmp_path, suffix):
    written = simulate_perturbseq(**TO_DISK, out=tmp_path / f"screen{suffix}", chunk_size=1000)
    assert not sparse.issparse(written.X)  # opened without loading the counts
    assert written.shape == screen_in_memory.shape
    assert (_counts(written) != screen_in_memory.X).nnz == 0
    pd.testing.assert_frame_equal(written.obs, screen_in_memory.obs)
    pd.testing.assert_frame_equal(written.var, screen_in_memory.var)
    pd.testing.assert_frame_equal(true_means(written), true_means(screen_in_memory))
    truth, expected = written.uns["simulation"], screen_in_memory.uns["simulation"]
    pd.testing.assert_frame_equal(truth["network"], expected["network"])
    assert truth["params"]["doses"].tolist() == [0.5, 1.0] and "out" not in truth["params"]
    assert [p.name for p in tmp_path.iterdir()] == [f"screen{suffix}"]


def test_counts_do_not_depend_on_the_chunk_size(tmp_path):
    import h5py

    first = simulate_perturbseq(**TO_DISK, out=tmp_path / "a.h5ad", chunk_size=1000)
    second = simulate_perturbseq(**TO_DISK, out=tmp_path / "b.h5ad", chunk_size=7777)
    first.file.close(), second.file.close()
    with h5py.File(tmp_path / "a.h5ad") as a, h5py.File(tmp_path / "b.h5ad") as b:
        names = []
        a.visit(names.append)
        other = []
        b.visit(other.append)
        assert names == other and "X/data" in names and "obs/_index" in names
        for name in names:  # every stored array and attribute, value for value
            assert dict(a[name].attrs).keys() == dict(b[name].attrs).keys()
            for key, value in a[name].attrs.items():
                np.testing.assert_array_equal(value, b[name].attrs[key])
            if isinstance(a[name], h5py.Dataset):
                assert a[name].chunks == b[name].chunks
                np.testing.assert_array_equal(a[name][()], b[name][()])


def test_opened_screen_reads_cells_from_disk(tmp_path):
    written = simulate_perturbseq(800, n_genes=20, out=tmp_path / "s.h5ad", chunk_size=300)
    assert written.isbacked and written.filename == tmp_path / "s.h5ad"
    in_memory = simulate_perturbseq(800, n_genes=20)
    subset = written[written.obs["perturbation"] == "control"].to_memory()
    assert (subset.X != in_memory[in_memory.obs["perturbation"] == "control"].X).nnz == 0
    assert (ad.read_h5ad(tmp_path / "s.h5ad").X != in_memory.X).nnz == 0


def test_existing_screen_is_refused_unless_overwrite(tmp_path):
    out = tmp_path / "screen.zarr"
    simulate_perturbseq(800, n_genes=20, seed=0, out=out)
    with pytest.raises(FileExistsError, match="screen.zarr' exists; pass overwrite=True"):
        simulate_perturbseq(800, n_genes=20, seed=1, out=out)
    assert ad.read_zarr(out).uns["simulation"]["params"]["seed"] == 0  # untouched
    replaced = simulate_perturbseq(800, n_genes=20, seed=1, out=out, overwrite=True)
    assert replaced.uns["simulation"]["params"]["seed"] == 1
    assert (_counts(replaced) != simulate_perturbseq(800, n_genes=20, seed=1).X).nnz == 0
    assert [p.name for p in tmp_path.iterdir()] == ["screen.zarr"]


@pytest.mark.parametrize("suffix", [".h5ad", ".zarr"])
def test_interrupted_write_leaves_nothing_that_looks_complete(tmp_path, suffix):
    from cellflow.datasets._write import write_chunks

    screen = simulate_perturbseq(800, n_genes=20)
    out = tmp_path / f"screen{suffix}"
    out.mkdir() if suffix == ".zarr" else out.write_bytes(b"previous")  # an earlier result, to be kept

    def chunks():
        yield screen.X[:300], screen.obs.iloc[:300], {}
        raise KeyboardInterrupt  # Ctrl-C after one chunk is written

    with pytest.raises(KeyboardInterrupt):
        write_chunks(out, chunks(), var=screen.var, uns={}, chunk_size=100, overwrite=True)
    assert [p.name for p in tmp_path.iterdir()] == [out.name]
    assert out.is_dir() if suffix == ".zarr" else out.read_bytes() == b"previous"


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"out": "screen.csv"}, ValueError, "must end in .h5ad or .zarr"),
        ({"out": "nowhere/screen.h5ad"}, ValueError, "the folder 'nowhere' does not exist"),
        ({"out": "screen.h5ad", "chunk_size": 0}, ValueError, "chunk_size=0 must be at least 1"),
        ({"out": "screen.h5ad", "chunk_size": True}, TypeError, "chunk_size must be an int"),
        ({"out": "screen.h5ad", "overwrite": "yes"}, TypeError, "overwrite must be True or False"),
    ],
)
def test_bad_outputs_raise(tmp_path, monkeypatch, kwargs, error, match):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(error, match=match):
        simulate_perturbseq(500, n_genes=20, **kwargs)
    assert list(tmp_path.iterdir()) == []


def test_memory_holds_a_chunk_not_the_screen(tmp_path, monkeypatch):
    """Simulating to disk holds a chunk of cells; opening the result is left out (anndata reads its obs)."""
    import gc
    import tracemalloc

    monkeypatch.setattr("cellflow.datasets._write.open_backed", lambda path: None)

    def peak(n_cells, out=None):
        gc.collect()
        tracemalloc.start()
        try:
            simulate_perturbseq(n_cells, n_genes=40, n_combinations=4, out=out, chunk_size=4096)
        finally:
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
        return peak

    small, large = peak(8192, tmp_path / "small.h5ad"), peak(65536, tmp_path / "large.h5ad")
    in_memory = peak(65536)
    assert large < 1.25 * small  # 8 times the cells, about the same peak
    assert in_memory > 3 * large  # what the measure sees when every cell is kept
