"""Quadrature rules on [0, 1] for path integrals (integrated gradients / Jacobians)."""

from __future__ import annotations

import numpy as np

from clipalign.settings import Rule


def quadrature(rule: Rule, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Nodes α_k in (0, 1] and weights w_k with Σ_k w_k h(α_k) ≈ ∫₀¹ h(α) dα.

    ``gauss``: Gauss–Legendre, exact for polynomials of degree < 2·steps. ``riemann``: right Riemann
    sum α_k = k/steps, w_k = 1/steps (exCLIP's rule; error O(1/steps)).
    """
    if steps < 1:
        raise ValueError(f"the number of quadrature steps must be ≥ 1, got {steps}")
    if rule == "gauss":
        nodes, weights = np.polynomial.legendre.leggauss(steps)
        return (nodes + 1) / 2, weights / 2
    if rule == "riemann":
        return np.arange(1, steps + 1) / steps, np.full(steps, 1 / steps)
    raise ValueError(f"rule must be 'gauss' or 'riemann', got {rule!r}")
