r"""Small linear-algebra building blocks shared by the maps, penalties and closed forms.

Convention: a map's weight ``A`` is stored like :class:`torch.nn.Linear` (``out x in``) and computes
``y = x A^T + b``. The *small Gram* of ``A`` is the Gram of its shorter side:

.. math:: G(A) = A^\top A \;(\text{if out} \ge \text{in}), \qquad G(A) = A A^\top \;(\text{otherwise}),

the only Gram that can equal the identity for a rectangular matrix (``../shared/reference/MATH.md`` §1).
"""
from __future__ import annotations

import torch


def small_gram(weight: torch.Tensor) -> torch.Tensor:
    r"""The small Gram :math:`G(A)` of a 2-D weight (``min(out, in)`` square).

    Example:
        >>> import torch
        >>> small_gram(torch.eye(3, 2)).shape
        torch.Size([2, 2])
    """
    out_f, in_f = weight.shape[-2], weight.shape[-1]
    return weight.mT @ weight if out_f >= in_f else weight @ weight.mT


def gram_deviation(weight: torch.Tensor) -> torch.Tensor:
    r""":math:`G(A) - I` for the small Gram."""
    g = small_gram(weight)
    return g - torch.eye(g.shape[-1], dtype=g.dtype, device=g.device)


def orthogonality_error(weight: torch.Tensor) -> torch.Tensor:
    r""":math:`\lVert G(A) - I \rVert_F`, computed in at least float32 (float64 stays float64).

    Zero exactly when ``A`` has orthonormal columns (tall/square) or rows (wide).
    """
    w = weight if weight.dtype == torch.float64 else weight.float()
    return torch.linalg.matrix_norm(gram_deviation(w))


def tall(weight: torch.Tensor) -> torch.Tensor:
    """``weight`` if it has at least as many rows as columns, else its transpose (a view)."""
    return weight if weight.shape[-2] >= weight.shape[-1] else weight.mT


def polar(matrix: torch.Tensor) -> torch.Tensor:
    r"""Orthogonal polar factor :math:`UV^\top` of ``matrix = U\Sigma V^\top`` (thin SVD).

    The nearest matrix with orthonormal columns (tall) or rows (wide) in Frobenius norm.
    Singular values that are exactly zero make the factor non-unique; any completion is returned.
    """
    u, _, vh = torch.linalg.svd(matrix, full_matrices=False)
    return u @ vh


def newton_schulz_polar(matrix: torch.Tensor, steps: int = 2) -> torch.Tensor:
    r"""``steps`` Newton–Schulz iterations :math:`X \leftarrow \tfrac32 X - \tfrac12 X (X^\top X)` towards the polar factor.

    Works on the tall orientation (``X`` is n x k with n >= k, each iteration costs :math:`4nk^2` flops)
    and converges quadratically when every singular value lies in :math:`(0, \sqrt3)`. Meant for
    re-projecting a matrix that is already close to orthonormal (MATH.md §4).
    """
    x = tall(matrix)
    eye = torch.eye(x.shape[-1], dtype=x.dtype, device=x.device)
    for _ in range(steps):
        x = x @ (1.5 * eye - 0.5 * (x.mT @ x))
    return x if matrix.shape[-2] >= matrix.shape[-1] else x.mT


def random_orthogonal(out_features: int, in_features: int, *, generator: torch.Generator | None = None,
                      dtype: torch.dtype | None = None, device: torch.device | str | None = None,
                      special: bool = False) -> torch.Tensor:
    r"""A Haar-distributed matrix with orthonormal columns (tall) or rows (wide), shape ``out x in``.

    QR of a Gaussian matrix with the signs of ``diag(R)`` fixed (Mezzadri 2007). With ``special=True``
    (square only) the determinant is forced to +1 by flipping one column.
    """
    n, k = max(out_features, in_features), min(out_features, in_features)
    g = torch.randn(n, k, generator=generator, dtype=torch.float64)
    q, r = torch.linalg.qr(g)
    q = q * torch.sign(torch.diagonal(r)).where(torch.diagonal(r) != 0, torch.ones(()))
    if special:
        if n != k:
            raise ValueError("special=True (det = +1) needs a square matrix")
        if torch.linalg.det(q) < 0:
            q[:, 0] = -q[:, 0]
    w = q if out_features >= in_features else q.mT
    return w.to(dtype=dtype or torch.get_default_dtype(), device=device).contiguous()


def semi_identity(out_features: int, in_features: int, *, dtype: torch.dtype | None = None,
                  device: torch.device | str | None = None) -> torch.Tensor:
    """The ``out x in`` matrix with ones on its main diagonal (orthonormal rows or columns)."""
    return torch.eye(out_features, in_features, dtype=dtype or torch.get_default_dtype(), device=device)
