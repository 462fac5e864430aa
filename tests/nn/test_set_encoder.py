import pytest
import torch
import torch.nn.functional as F

from cellflow.nn import SetEncoder, TokenEmbedding

POOLINGS = ["mean", "sum", "attention"]
N_TOKENS, DIM = 10, 8


def make_encoder(pooling, seed=0):
    torch.manual_seed(seed)
    return SetEncoder(TokenEmbedding.learned(N_TOKENS, DIM), DIM, pooling=pooling, n_heads=2)


def random_sets(batch=6, k=4, seed=1):
    generator = torch.Generator().manual_seed(seed)
    token_ids = torch.randint(0, N_TOKENS, (batch, k), generator=generator)
    doses = torch.rand(batch, k, generator=generator) + 0.5
    sizes = torch.arange(batch) % (k + 1)  # 0..k real tokens per row, the rest padding
    mask = torch.arange(k)[None, :] < sizes[:, None]
    return token_ids, doses, mask


@pytest.mark.parametrize("pooling", POOLINGS)
def test_order_invariance(pooling):
    encoder = make_encoder(pooling)
    token_ids, doses, mask = random_sets(batch=8, k=5)
    generator = torch.Generator().manual_seed(2)
    order = torch.stack([torch.randperm(5, generator=generator) for _ in range(8)])  # per-row permutation
    pooled, tokens = encoder(token_ids, doses, mask)
    pooled_perm, tokens_perm = encoder(token_ids.gather(1, order), doses.gather(1, order), mask.gather(1, order))
    torch.testing.assert_close(pooled_perm, pooled, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(tokens_perm, tokens.gather(1, order[..., None].expand(-1, -1, DIM)))


@pytest.mark.parametrize("pooling", POOLINGS)
def test_padding_invariance(pooling):
    encoder = make_encoder(pooling)
    token_ids, doses, mask = random_sets()
    pooled, tokens = encoder(token_ids, doses, mask)
    # Extra padded columns carrying junk ids (even -1) and doses change nothing.
    pad_ids = torch.tensor([[-1, 3, 7]]).expand(len(token_ids), -1)
    padded = encoder(
        torch.cat([token_ids, pad_ids], 1),
        torch.cat([doses, torch.full((len(doses), 3), 2.0)], 1),
        torch.cat([mask, torch.zeros(len(mask), 3, dtype=torch.bool)], 1),
    )
    torch.testing.assert_close(padded[0], pooled)
    torch.testing.assert_close(padded[1][:, :4], tokens)
    assert torch.equal(padded[1][:, 4:], torch.zeros(len(mask), 3, DIM))


@pytest.mark.parametrize("pooling", POOLINGS)
def test_dose_zero_equals_absent(pooling):
    # Defined behaviour: a dose-0 token is absent everywhere, so {A: 1, B: 0} == {A: 1} for every
    # pooling, including the mean's denominator (it counts present tokens only).
    encoder = make_encoder(pooling)
    with_zero = encoder(torch.tensor([[2, 5]]), torch.tensor([[1.0, 0.0]]), torch.tensor([[True, True]]))
    alone = encoder(torch.tensor([[2]]), torch.tensor([[1.0]]), torch.tensor([[True]]))
    torch.testing.assert_close(with_zero[0], alone[0])
    assert torch.equal(with_zero[1][0, 1], torch.zeros(DIM))


@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_mean_and_sum_match_direct_computation_for_any_size(k):
    token_ids = torch.randint(0, N_TOKENS, (3, k), generator=torch.Generator().manual_seed(k))
    doses = torch.rand(3, k, generator=torch.Generator().manual_seed(10 + k)) + 0.1
    mask = torch.ones(3, k, dtype=torch.bool)
    for pooling in ("mean", "sum"):
        encoder = make_encoder(pooling)
        table = encoder.token_embedding.learned_embedding.weight
        expected_sum = (table[token_ids] * doses[..., None]).sum(1)
        expected = expected_sum / k if pooling == "mean" else expected_sum
        pooled, tokens = encoder(token_ids, doses, mask)
        torch.testing.assert_close(pooled, expected)
        assert tokens.shape == (3, k, DIM)


@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_attention_pooling_matches_torch_attention(k):
    encoder = make_encoder("attention")
    attention = encoder.attention
    token_ids, doses, _ = random_sets(batch=4, k=k, seed=k)
    mask = torch.ones(4, k, dtype=torch.bool)
    mask[0, 1:] = False  # one row with a single token
    pooled, tokens = encoder(token_ids, doses, mask)
    # Reference: torch's scaled_dot_product_attention with the learned query, heads as a batch axis.
    heads, head_dim = attention.n_heads, DIM // attention.n_heads
    query = attention.query.view(1, heads, 1, head_dim).expand(4, -1, -1, -1)
    keys = attention.key(tokens).view(4, k, heads, head_dim).transpose(1, 2)
    values = attention.value(tokens).view(4, k, heads, head_dim).transpose(1, 2)
    reference = F.scaled_dot_product_attention(query, keys, values, attn_mask=mask[:, None, None, :])
    expected = attention.out(reference.reshape(4, DIM))
    torch.testing.assert_close(pooled, expected)
    # A single token gets all the attention: out(value(token)).
    torch.testing.assert_close(pooled[0], attention.out(attention.value(tokens[0, 0])))


@pytest.mark.parametrize("pooling", POOLINGS)
def test_empty_set_pools_to_zeros_without_nan(pooling):
    encoder = make_encoder(pooling)
    token_ids, doses, mask = random_sets(batch=4, k=3)
    mask[1] = False  # control row: no tokens at all
    pooled, tokens = encoder(token_ids, doses, mask)
    assert torch.equal(pooled[1], torch.zeros(DIM))
    assert torch.isfinite(pooled).all() and torch.isfinite(tokens).all()
    (pooled.square().sum() + tokens.sum()).backward()
    for name, parameter in encoder.named_parameters():
        assert parameter.grad is None or torch.isfinite(parameter.grad).all(), name


@pytest.mark.parametrize("pooling", POOLINGS)
def test_all_rows_empty_and_zero_width(pooling):
    encoder = make_encoder(pooling)
    pooled, tokens = encoder(
        torch.zeros(3, 0, dtype=torch.long), torch.zeros(3, 0), torch.zeros(3, 0, dtype=torch.bool)
    )
    assert torch.equal(pooled, torch.zeros(3, DIM)) and tokens.shape == (3, 0, DIM)
    pooled, _ = encoder(torch.zeros(3, 2, dtype=torch.long), torch.ones(3, 2), torch.zeros(3, 2, dtype=torch.bool))
    assert torch.equal(pooled, torch.zeros(3, DIM))


def test_dose_scales_tokens():
    encoder = make_encoder("sum")
    ids, mask = torch.tensor([[4]]), torch.tensor([[True]])
    once, _ = encoder(ids, torch.tensor([[1.0]]), mask)
    twice, _ = encoder(ids, torch.tensor([[2.0]]), mask)
    torch.testing.assert_close(twice, 2 * once)


def test_from_features_standardises_and_identical_rows_embed_identically():
    torch.manual_seed(0)
    features = torch.randn(6, 5) * 3 + 7
    features[4] = features[1]  # two tokens described identically
    features[:, 2] = 1.5  # a constant column
    embedding = TokenEmbedding.from_features(features, DIM)
    table = embedding.features
    torch.testing.assert_close(table[:, [0, 1, 3, 4]].mean(0), torch.zeros(4), atol=1e-6, rtol=0)
    torch.testing.assert_close(table[:, [0, 1, 3, 4]].std(0, unbiased=False), torch.ones(4))
    assert torch.equal(table[:, 2], torch.zeros(6))
    out = embedding(torch.tensor([[1, 4, 0]]))
    assert out.shape == (1, 3, DIM)
    assert torch.equal(out[0, 0], out[0, 1])
    assert not torch.allclose(out[0, 0], out[0, 2])


def test_learned_residual_starts_at_zero_and_unseen_tokens_keep_their_features():
    torch.manual_seed(0)
    features = torch.randn(5, 3)
    combined = TokenEmbedding.from_features(features, DIM, learned_residual=True)
    features_only = TokenEmbedding.from_features(features, DIM)
    features_only.project.load_state_dict(combined.project.state_dict())
    ids = torch.arange(5)[None]
    torch.testing.assert_close(combined(ids), features_only(ids))
    optimizer = torch.optim.Adam(combined.learned_embedding.parameters(), lr=0.1)
    combined(torch.tensor([[0, 1]])).square().sum().backward()  # tokens 2..4 are never seen
    optimizer.step()
    residual = combined.learned_embedding.weight
    assert residual[:2].abs().sum() > 0 and torch.equal(residual[2:], torch.zeros(3, DIM))


def test_projection_when_sizes_differ_keeps_dose_zero_at_zero():
    torch.manual_seed(0)
    encoder = SetEncoder(TokenEmbedding.learned(N_TOKENS, 4), 16, pooling="sum")
    pooled, tokens = encoder(torch.tensor([[1, 2]]), torch.tensor([[1.0, 0.0]]), torch.tensor([[True, True]]))
    assert pooled.shape == (1, 16) and torch.equal(tokens[0, 1], torch.zeros(16))


def test_bad_inputs_raise():
    encoder = make_encoder("mean")
    ids, doses, mask = random_sets()
    with pytest.raises(TypeError, match="token_ids"):
        encoder(ids.float(), doses, mask)
    with pytest.raises(ValueError, match=r"\[0, 10\)"):
        encoder(ids + N_TOKENS, doses, torch.ones_like(mask))
    with pytest.raises(ValueError, match="shape"):
        encoder(ids, doses[:, :2], mask)
    with pytest.raises(TypeError, match="mask"):
        encoder(ids, doses, mask.float())
    with pytest.raises(ValueError, match="pooling"):
        SetEncoder(TokenEmbedding.learned(3, 8), 8, pooling="max")
    with pytest.raises(ValueError, match="n_heads"):
        SetEncoder(TokenEmbedding.learned(3, 8), 8, pooling="attention", n_heads=3)
    with pytest.raises(ValueError, match="NaN"):
        TokenEmbedding.from_features(torch.tensor([[1.0, float("nan")]]), 8)
