import pytest
import torch

from cellflow.backbones import EncodedCondition
from cellflow.nn import ConditionEncoder, TokenEmbedding

COND_DIM = 8


def make_encoder(**kwargs):
    torch.manual_seed(0)
    options = {"covariate_cardinalities": [3, 2]} | kwargs
    return ConditionEncoder(TokenEmbedding.learned(6, COND_DIM), COND_DIM, **{"pooling": "mean", **options})


def batch(size=4, k=3, seed=1):
    generator = torch.Generator().manual_seed(seed)
    token_ids = torch.randint(0, 6, (size, k), generator=generator)
    doses = torch.rand(size, k, generator=generator) + 0.5
    mask = torch.ones(size, k, dtype=torch.bool)
    mask[0] = False  # a control row
    mask[1, 2] = False
    covariates = torch.stack([torch.arange(size) % 3, torch.arange(size) % 2], 1)
    return token_ids, doses, mask, covariates


@pytest.mark.parametrize("pooling", ["mean", "sum", "attention"])
def test_shapes(pooling):
    encoder = make_encoder(pooling=pooling, use_time=True)
    token_ids, doses, mask, covariates = batch()
    out = encoder(token_ids, doses, mask, covariates, time=torch.rand(4))
    assert isinstance(out, EncodedCondition)
    assert out.vector.shape == (4, COND_DIM) and out.tokens.shape == (4, 3, COND_DIM)
    assert torch.equal(out.mask, mask)
    assert torch.isfinite(out.vector).all()


def test_covariates_change_the_vector():
    encoder = make_encoder()
    token_ids, doses, mask, covariates = batch()
    base = encoder(token_ids, doses, mask, covariates).vector
    for column in range(2):
        changed = covariates.clone()
        changed[:, column] = (changed[:, column] + 1) % encoder.covariate_cardinalities[column]
        other = encoder(token_ids, doses, mask, changed).vector
        assert (other - base).abs().sum(1).min() > 1e-4  # every row moves


def test_time_changes_the_vector_and_is_required():
    encoder = make_encoder(use_time=True)
    token_ids, doses, mask, covariates = batch()
    early = encoder(token_ids, doses, mask, covariates, time=torch.zeros(4)).vector
    late = encoder(token_ids, doses, mask, covariates, time=torch.full((4,), 0.5)).vector
    assert (late - early).abs().sum(1).min() > 1e-4
    with pytest.raises(ValueError, match="time"):
        encoder(token_ids, doses, mask, covariates)


def test_drop_gives_the_same_null_condition_for_any_input():
    encoder = make_encoder(use_time=True)
    token_ids, doses, mask, covariates = batch(size=6, seed=3)
    time = torch.rand(6)
    drop = torch.tensor([True, False, True, True, False, True])
    kept = encoder(token_ids, doses, mask, covariates, time)
    out = encoder(token_ids, doses, mask, covariates, time, drop=drop)
    assert torch.equal(out.vector[drop], encoder.null_vector.expand(4, -1))
    assert not out.mask[drop].any() and torch.equal(out.tokens[drop], torch.zeros(4, 3, COND_DIM))
    torch.testing.assert_close(out.vector[~drop], kept.vector[~drop])
    assert torch.equal(out.mask[~drop], kept.mask[~drop])
    # The null vector is learned.
    out.vector.sum().backward()
    assert encoder.null_vector.grad.abs().sum() > 0


def test_dose_zero_tokens_are_not_in_the_mask():
    encoder = make_encoder()
    token_ids, doses, mask, covariates = batch()
    doses[2, 1] = 0.0
    out = encoder(token_ids, doses, mask, covariates)
    assert not out.mask[2, 1] and out.mask[2, 0]


def test_without_covariates():
    torch.manual_seed(0)
    encoder = ConditionEncoder(TokenEmbedding.learned(6, COND_DIM), COND_DIM, pooling="mean")
    token_ids, doses, mask, _ = batch()
    assert encoder(token_ids, doses, mask).vector.shape == (4, COND_DIM)
    with pytest.raises(ValueError, match="covariate_cardinalities"):
        encoder(token_ids, doses, mask, covariates=torch.zeros(4, 1, dtype=torch.long))


def test_bad_covariates_raise():
    encoder = make_encoder()
    token_ids, doses, mask, covariates = batch()
    with pytest.raises(ValueError, match=r"shape \(4, 2\)"):
        encoder(token_ids, doses, mask, covariates[:, :1])
    with pytest.raises(ValueError, match="covariates"):
        encoder(token_ids, doses, mask, None)
    too_large = covariates.clone()
    too_large[0, 1] = 2
    with pytest.raises(ValueError, match=r"covariates\[:, 1\] must lie in \[0, 2\)"):
        encoder(token_ids, doses, mask, too_large)
    with pytest.raises(TypeError, match="integer"):
        encoder(token_ids, doses, mask, covariates.float())
    with pytest.raises(ValueError, match="drop"):
        encoder(token_ids, doses, mask, covariates, drop=torch.ones(4))
    with pytest.raises(ValueError, match="covariate_cardinalities"):
        ConditionEncoder(TokenEmbedding.learned(6, COND_DIM), COND_DIM, [0], pooling="sum")
