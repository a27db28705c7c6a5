"""Shared test helpers."""
from torch import nn


class Linear(nn.Module):
    """``f(x) = A x``: a residual function with closed-form ResNet and ODE solutions."""

    def __init__(self, A):
        super().__init__()
        self.A = nn.Parameter(A.clone())

    def forward(self, x):
        return x @ self.A.T
