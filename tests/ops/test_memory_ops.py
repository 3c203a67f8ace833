"""The fused memory maths equals the loop-based reference on outputs, states and gradients."""

import itertools

import pytest
import torch

from armt.ops import fused, reference


def _inputs(B, H, T, M, dk_in, dv, gating, seed):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)
    x_q, x_k = r(B, H, T, dk_in), r(B, H, M, dk_in)
    v = r(B, H, M, dv)
    beta = torch.sigmoid(r(B, H, M, dv if gating else 1))
    return x_q, x_k, v, beta


@pytest.mark.parametrize("nu", [1, 2, 3])
def test_dpfp_matches_reference(nu):
    x = torch.randn(3, 2, 5, 4, dtype=torch.float64, requires_grad=True)
    a, b = fused.dpfp(x, nu), reference.dpfp(x, nu)
    assert a.shape == (3, 2, 5, 2 * nu * 4)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    torch.testing.assert_close(a.norm(dim=-1), torch.ones(3, 2, 5, dtype=torch.float64))
    ga, = torch.autograd.grad(a.pow(3).sum(), x)
    gb, = torch.autograd.grad(b.pow(3).sum(), x)
    torch.testing.assert_close(ga, gb, rtol=0, atol=1e-10)


def test_dpfp_is_the_official_formula():
    # u = [relu(x), relu(-x)], features u_i * u_{i-j} for j = 1..nu, L2-normalised
    x = torch.tensor([1.0, -2.0], dtype=torch.float64)
    u = torch.tensor([1.0, 0.0, 0.0, 2.0], dtype=torch.float64)
    raw = torch.cat([u * u.roll(1), u * u.roll(2)])
    torch.testing.assert_close(fused.dpfp(x, 2), raw / raw.norm())


CASES = list(itertools.product([1, 2, 4], [False, True], [False, True], [False, True], [False, True]))


@pytest.mark.parametrize("H,gating,use_denom,correction,first", CASES)
def test_write_and_read_match_reference(H, gating, use_denom, correction, first):
    B, T, M, d_in, dv = 2, 5, 3, 2, 3
    nu = 3
    x_q, x_k, v, beta = _inputs(B, H, T, M, d_in, dv, gating, seed=H)
    g = torch.Generator().manual_seed(7)
    A0 = torch.randn(B, H, 2 * nu * d_in, dv, generator=g, dtype=torch.float64) * 0.3
    z0 = torch.rand(B, H, 2 * nu * d_in, generator=g, dtype=torch.float64)
    leaves = [t.requires_grad_() for t in (x_q, x_k, v, beta, A0, z0)]
    memory = None if first else (A0, z0 if use_denom else None)

    results = []
    for impl in (fused, reference):
        k = impl.dpfp(x_k, nu)
        A, z = impl.write(k, v, beta, memory, use_denom=use_denom, correction=correction)
        out = impl.read(impl.dpfp(x_q, nu), A, z)
        loss = out.pow(2).sum() + A.sin().sum() + (0 if z is None else z.cos().sum())
        grads = torch.autograd.grad(loss, leaves, allow_unused=True)
        results.append((out, A, z, grads))

    (o1, A1, z1, g1), (o2, A2, z2, g2) = results
    torch.testing.assert_close(o1, o2, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(A1, A2, rtol=1e-10, atol=1e-10)
    assert (z1 is None) == (z2 is None) == (not use_denom)
    if use_denom:
        torch.testing.assert_close(z1, z2, rtol=1e-10, atol=1e-10)
    for a, b in zip(g1, g2):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)


def test_first_write_is_plain_outer_product_sum():
    k = torch.rand(1, 1, 2, 3, dtype=torch.float64)
    v = torch.randn(1, 1, 2, 4, dtype=torch.float64)
    beta = torch.full((1, 1, 2, 1), 0.5, dtype=torch.float64)
    A, z = fused.write(k, v, beta, None, use_denom=True, correction=True)
    expected = 0.5 * (torch.outer(k[0, 0, 0], v[0, 0, 0]) + torch.outer(k[0, 0, 1], v[0, 0, 1]))
    torch.testing.assert_close(A[0, 0], expected)
    torch.testing.assert_close(z[0, 0], k[0, 0].sum(0))


def test_gamma_is_detached():
    # with correction the z update must not carry gradient through gamma
    k = fused.dpfp(torch.randn(1, 1, 3, 2, dtype=torch.float64), 3)
    v = torch.randn(1, 1, 3, 2, dtype=torch.float64)
    beta = torch.ones(1, 1, 3, 1, dtype=torch.float64)
    z0 = torch.rand(1, 1, 12, dtype=torch.float64, requires_grad=True)
    A0 = torch.zeros(1, 1, 12, 2, dtype=torch.float64)
    _, z = fused.write(k, v, beta, (A0, z0), use_denom=True, correction=True)
    g, = torch.autograd.grad(z.sum(), z0)
    torch.testing.assert_close(g, torch.ones_like(g))
