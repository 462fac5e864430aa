import numpy as np
import pytest
import torch

from cellflow.flow._token_shift import TokenShifts
from cellflow.pp._conditions import parse_condition


def _cells():
    """Two contexts; A measured alone in both, B only in context 0, C only inside a combination."""
    labels = ["control", "control", "A", "A", "B", "A+C", "control", "control", "A"]
    doses = [None, None, "2", "2", "1", "1+1", None, None, "1"]
    context = np.array([0, 0, 0, 0, 0, 0, 1, 1, 1])
    latent = np.array([[0, 0], [2, 0], [5, 1], [3, 1], [1, 4], [9, 9], [10, 10], [10, 12], [11, 11]], dtype=float)
    conditions = [parse_condition(lab, control="control", dose=d) for lab, d in zip(labels, doses)]
    return latent, conditions, context


def test_shifts_are_mean_differences_per_unit_dose():
    latent, conditions, context = _cells()
    shifts = TokenShifts.from_cells(latent, conditions, context, 2, ["A", "B", "C"])
    # context 0: control mean (1, 0); A at dose 2 has mean (4, 1) -> (3, 1) / 2
    np.testing.assert_allclose(shifts.table[0, 0], [1.5, 0.5])
    np.testing.assert_allclose(shifts.table[0, 1], [0.0, 4.0])  # B: (1, 4) - (1, 0)
    # context 1: control mean (10, 11); A at dose 1: (11, 11) -> (1, 0)
    np.testing.assert_allclose(shifts.table[1, 0], [1.0, 0.0])
    # B never measured in context 1: its shift from context 0 transfers
    np.testing.assert_allclose(shifts.table[1, 1], [0.0, 4.0])
    # C never measured alone: from A+C in context 0, (9, 9) - (1, 0) minus A's (1.5, 0.5); transferred to context 1
    np.testing.assert_allclose(shifts.table[:, 2], [[6.5, 8.5], [6.5, 8.5]])
    assert shifts.measured.tolist() == [[True, True, False], [True, False, False]]


def test_shift_of_a_combination_is_the_dose_weighted_sum():
    latent, conditions, context = _cells()
    shifts = TokenShifts.from_cells(latent, conditions, context, 2, ["A", "B", "C"])
    token_ids = torch.tensor([[0, 1], [0, 0], [0, 2]])
    doses = torch.tensor([[1.0, 0.5], [2.0, 0.0], [1.0, 1.0]])
    mask = torch.tensor([[True, True], [True, False], [True, True]])
    out = shifts(token_ids, doses, mask, torch.tensor([0, 1, 0]))
    expected = [[1.5 + 0.0, 0.5 + 2.0], [2.0, 0.0], [1.5 + 6.5, 0.5 + 8.5]]
    np.testing.assert_allclose(out.numpy(), expected)


def test_round_trip_through_tensors():
    latent, conditions, context = _cells()
    shifts = TokenShifts.from_cells(latent, conditions, context, 2, ["A", "B", "C"])
    again = TokenShifts.from_tensors(shifts.tensors())
    assert torch.equal(again.table, shifts.table) and torch.equal(again.measured, shifts.measured)


def test_additive_shift_needs_control_source():
    from cellflow.models._config import CellFlowConfig

    config = {
        "backbone": "mlp",
        "backbone_kwargs": {},
        "latent_dim": 4,
        "likelihood": "nb",
        "batch_key": None,
        "source": "control",
        "source_shift": "measured",
        "gene_offsets": True,
        "token_embedding": "learned",
        "cond_dim": 8,
        "pooling": "sum",
        "vae_hidden": 8,
        "vae_layers": 1,
        "vae_kl_weight": 1.0,
        "seed": 0,
        "time_scale": 1000.0,
    }
    CellFlowConfig(**config)
    with pytest.raises(ValueError, match="source='noise'"):
        CellFlowConfig(**{**config, "source": "noise", "source_shift": "additive"})
    with pytest.raises(ValueError, match=r"source_shift='scgen' must be one of \('measured', 'additive', 'none'\)"):
        CellFlowConfig(**{**config, "source_shift": "scgen"})


def test_measured_mode_uses_a_conditions_own_shift_and_sums_the_rest():
    latent, conditions, context = _cells()
    shifts = TokenShifts.from_cells(latent, conditions, context, 2, ["A", "B", "C"], mode="measured")
    # A+C (doses 1, 1) was measured in context 0: mean (9, 9) - control (1, 0).
    # A at dose 2 in context 0: its own mean (4, 1) - (1, 0), not 2 x the per-unit shift... which agree here.
    # A+B was never measured: the dose-weighted sum of singles.
    token_ids = torch.tensor([[0, 2], [0, 1], [0, 2], [0, 0]])
    doses = torch.tensor([[1.0, 1.0], [1.0, 1.0], [1.0, 1.0], [2.0, 0.0]])
    mask = torch.tensor([[True, True], [True, True], [True, True], [True, False]])
    out = shifts(token_ids, doses, mask, torch.tensor([0, 0, 1, 0]))
    np.testing.assert_allclose(out[0].numpy(), [8.0, 9.0])  # measured A+C
    np.testing.assert_allclose(out[1].numpy(), [1.5, 4.5])  # A + B, summed
    np.testing.assert_allclose(out[2].numpy(), [7.5, 8.5])  # A+C in context 1: A (1, 0) + C (6.5, 8.5)
    np.testing.assert_allclose(out[3].numpy(), [3.0, 1.0])  # A at dose 2, measured
    again = TokenShifts.from_tensors(shifts.tensors())
    torch.testing.assert_close(again(token_ids, doses, mask, torch.tensor([0, 0, 1, 0])), out)
    with pytest.raises(ValueError, match="mode"):
        TokenShifts.from_cells(latent, conditions, context, 2, ["A", "B", "C"], mode="exact")


def test_combination_scale_multiplies_only_unmatched_sums_of_several_dosed_tokens():
    latent, conditions, context = _cells()
    plain = TokenShifts.from_cells(latent, conditions, context, 2, ["A", "B", "C"], mode="measured")
    scaled = TokenShifts.from_tensors(plain.tensors())
    scaled.combination_scale = 0.5
    # measured A+C; unseen A+B; A+C in context 1 (unmeasured there); A alone at dose 2 (unmeasured at that dose
    # in context 1); B with A at dose 0 (one dosed token); A+B padded to a third slot.
    token_ids = torch.tensor([[0, 2, 0], [0, 1, 0], [0, 2, 0], [0, 0, 0], [0, 1, 0], [1, 0, 0]])
    doses = torch.tensor([[1.0, 1.0, 0], [1.0, 1.0, 0], [1.0, 1.0, 0], [2.0, 0, 0], [0.0, 1.0, 0], [1.0, 1.0, 7.0]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 0], [1, 1, 0], [1, 0, 0], [1, 1, 0], [1, 1, 0]], dtype=torch.bool)
    rows = torch.tensor([0, 0, 1, 1, 0, 0])
    before, after = plain(token_ids, doses, mask, rows), scaled(token_ids, doses, mask, rows)
    factor = torch.tensor([1.0, 0.5, 0.5, 1.0, 1.0, 0.5])[:, None]
    torch.testing.assert_close(after, before * factor)
    assert TokenShifts.from_tensors(scaled.tensors()).combination_scale == 0.5
    assert "combination_scale" not in plain.tensors()  # checkpoints of the plain sum are as before


def test_a_token_only_in_combinations_with_two_unknowns_gets_no_shift():
    # C+D: neither token measured alone, so neither shift is identifiable; both stay zero.
    labels = ["control", "control", "A", "C+D"]
    latent = np.array([[0, 0], [0, 0], [1, 0], [5, 5]], dtype=float)
    conditions = [parse_condition(lab, control="control") for lab in labels]
    shifts = TokenShifts.from_cells(latent, conditions, np.zeros(4, dtype=int), 1, ["A", "C", "D"])
    np.testing.assert_allclose(shifts.table[0, 0], [1.0, 0.0])
    np.testing.assert_allclose(shifts.table[0, 1:], 0.0)
