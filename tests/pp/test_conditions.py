import pytest

from cellflow.pp import Condition, canonical_label, parse_condition


def test_control_is_its_own_condition():
    cond = parse_condition("ctrl", control="ctrl")
    assert cond == Condition((), ())
    assert cond.is_control
    assert cond.label("ctrl") == "ctrl"


@pytest.mark.parametrize("label", ["A+B", "B+A", " B + A "])
def test_order_does_not_matter(label):
    assert parse_condition(label, control="ctrl") == Condition(("A", "B"), (1.0, 1.0))
    assert canonical_label(label, control="ctrl") == "A+B"


@pytest.mark.parametrize("size", [1, 2, 3, 5])
def test_any_combination_size(size):
    tokens = [f"T{i}" for i in reversed(range(size))]
    cond = parse_condition("+".join(tokens), control="ctrl")
    assert cond.tokens == tuple(sorted(tokens))
    assert len(cond.doses) == size


def test_doses_follow_their_tokens_when_reordered():
    cond = parse_condition("B+A", control="ctrl", dose="0.5+2")
    assert cond.tokens == ("A", "B")
    assert cond.doses == (2.0, 0.5)
    assert parse_condition("A+B", control="ctrl", dose="2+0.5") == cond


def test_scalar_dose_applies_to_every_token():
    assert parse_condition("A+B", control="ctrl", dose=0.25).doses == (0.25, 0.25)


def test_custom_separator():
    assert parse_condition("B;A", control="ctrl", sep=";").tokens == ("A", "B")
    assert parse_condition("A+B", control="ctrl", sep=";").tokens == ("A+B",)


@pytest.mark.parametrize(
    ("label", "dose", "message"),
    [
        ("", None, "Empty perturbation label"),
        ("   ", None, "Empty perturbation label"),
        ("A+", None, "empty token"),
        ("A++B", None, "empty token"),
        ("A+A", None, "repeats a token"),
        ("ctrl+A", None, "combines the control label"),
        ("A+B", "1", "has 1 value"),
        ("A", "1+1", "has 2 value"),
        ("A+B", "1+x", "not a number"),
        ("A", "-1", "non-negative"),
        ("A", "nan", "finite"),
    ],
)
def test_bad_labels_and_doses(label, dose, message):
    with pytest.raises(ValueError, match=message):
        parse_condition(label, control="ctrl", dose=dose)


def test_label_must_be_a_string_and_dose_not_a_bool():
    with pytest.raises(TypeError, match="must be a string"):
        parse_condition(3, control="ctrl")
    with pytest.raises(TypeError, match="is a bool"):
        parse_condition("A", control="ctrl", dose=True)


def test_numpy_number_dose_applies_to_every_token():
    import numpy as np

    assert parse_condition("B+A", control="ctrl", dose=np.float32(0.5)).doses == (0.5, 0.5)
    assert parse_condition("B+A", control="ctrl", dose=np.int64(2)).doses == (2.0, 2.0)
