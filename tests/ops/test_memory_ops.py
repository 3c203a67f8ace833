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


CASES = [c + (False,) for c in itertools.product([1, 2, 4], [False, True], [False, True], [False, True],
                                                [False, True])]
# write_gate="hard" weights the z update by beta; it changes only runs with the normaliser
CASES += [c + (True,) for c in itertools.product([1, 2], [False, True], [True], [False, True], [False, True])]


@pytest.mark.parametrize("H,gating,use_denom,correction,first,z_by_beta", CASES)
def test_write_and_read_match_reference(H, gating, use_denom, correction, first, z_by_beta):
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
        A, z = impl.write(k, v, beta, memory, use_denom=use_denom, correction=correction, z_by_beta=z_by_beta)
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


@pytest.mark.parametrize("kind", ["sigmoid", "hard"])
def test_gate_matches_reference(kind):
    x = torch.linspace(-6, 6, 97, dtype=torch.float64, requires_grad=True)
    a, b = fused.gate(x, kind), reference.gate(x, kind)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    ga, = torch.autograd.grad(a.sum(), x)
    gb, = torch.autograd.grad(b.sum(), x)
    torch.testing.assert_close(ga, gb, rtol=0, atol=1e-12)


def test_hard_gate_is_exactly_off_and_on_beyond_two():
    x = torch.tensor([-9.0, -2.0, 0.0, 1.0, 2.0, 9.0], dtype=torch.float64)
    assert fused.gate(x, "hard").tolist() == [0.0, 0.0, 0.5, 0.75, 1.0, 1.0]
    # the sigmoid's slope at 0, so the two gates start alike
    x0 = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    for kind in ("sigmoid", "hard"):
        g, = torch.autograd.grad(fused.gate(x0, kind).sum(), x0)
        assert g.item() == pytest.approx(0.25)


@pytest.mark.parametrize("gating", [False, True])
def test_a_write_with_beta_zero_changes_nothing_when_z_is_weighted(gating):
    B, H, M, d_in, dv = 2, 2, 3, 2, 4
    x_q, x_k, v, _ = _inputs(B, H, 1, M, d_in, dv, gating, seed=3)
    k = fused.dpfp(x_k, 3)
    A0 = torch.randn(B, H, k.shape[-1], dv, dtype=torch.float64)
    z0 = torch.rand(B, H, k.shape[-1], dtype=torch.float64) * 0.01  # small: gamma > 0, z would grow
    beta = torch.zeros(B, H, M, dv if gating else 1, dtype=torch.float64)
    A, z = fused.write(k, v, beta, (A0, z0), use_denom=True, correction=True, z_by_beta=True)
    assert torch.equal(A, A0) and torch.equal(z, z0)
    # the official update moves z all the same
    _, z_official = fused.write(k, v, beta, (A0, z0), use_denom=True, correction=True)
    assert not torch.allclose(z_official, z0)
