"""The public hypothesis strategies draw what they promise."""
import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import relaxedortho as ro
from relaxedortho.testing import strategies as ros


@given(st.sampled_from(ros.SHAPE_KINDS).flatmap(lambda k: st.tuples(st.just(k), ros.shapes(k))))
def test_shapes_have_their_kind(kind_shape):
    kind, (out_f, in_f) = kind_shape
    assert {"square": out_f == in_f, "tall": out_f > in_f, "wide": out_f < in_f}[kind]


@given(ros.matrices(max_condition=1e3, scale=(0.5, 2.0)))
def test_matrices_have_controlled_condition(a):
    s = np.linalg.svd(a.double().numpy(), compute_uv=False)
    assert 0.5 * (1 - 1e-5) <= s[0] <= 2.0 * (1 + 1e-5)
    assert s[0] / s[-1] <= 1e3 * (1 + 1e-3)


@given(ros.orthogonal_matrices(special=True))
def test_special_orthogonal_matrices(q):
    assert q.shape[0] == q.shape[1]
    assert float(torch.linalg.det(q.double())) == pytest.approx(1.0, abs=1e-4)


@given(ros.signed_permutations())
def test_signed_permutations_are_exactly_orthogonal(p):
    assert torch.equal(p.mT @ p, torch.eye(p.shape[0], dtype=p.dtype))


@given(ros.maps(shape=ros.shapes("wide"), dtype=torch.float64, bias=True))
def test_maps_strategy(m):
    assert isinstance(m, ro.AlignmentMap) and m.out_features < m.in_features and m.bias is not None
    assert m.weight.dtype == torch.float64


@given(st.data())
def test_strategy_arguments_validated(data):
    with pytest.raises(ValueError, match="kind"):
        data.draw(ros.shapes("round"))
    with pytest.raises(ValueError, match="variant"):
        ros.map_kwargs(["nope"])


def test_the_map_registry_is_consistent():
    """relaxedortho.testing.maps: one spectrum tag per variant, which the built map agrees with; square-only variants
    are built square; the strategies' MAP_VARIANTS are the "basic" ones."""
    from relaxedortho.testing import maps as registry

    for name, v in registry.VARIANTS.items():
        assert len(set(v.tags) & {"hard", "relaxed", "free"}) == 1, name
        m = v.build((3, 5), dtype=torch.float64)
        assert m.is_orthogonal == ("hard" in v.tags), name
        assert (m.out_features == m.in_features) == ("square-only" in v.tags), name
        if "so" in v.tags:
            assert float(torch.linalg.det(m.weight.detach())) == pytest.approx(1.0, abs=1e-12)
        if "parametrized" in v.tags:
            assert hasattr(m, "parametrizations")
        opt = registry.optimizer_for(m, "sgd", 1e-2)
        assert (type(opt).__module__.startswith("geoopt")) == ("geoopt" in v.tags), name
    assert set(ros.MAP_VARIANTS) == set(registry.variants("basic"))
    assert ros.SQUARE_ONLY == frozenset(registry.variants("basic", "square-only"))
    with pytest.raises(ValueError, match="unknown tag"):
        registry.variants("orthogonal")
