"""PyTorch checkpoint layouts <-> our parameters: name rules per network, and applying them."""
