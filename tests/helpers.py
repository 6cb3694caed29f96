"""Shared test utilities."""

import numpy as np


def rel_l2(ours, reference) -> float:
    """Relative L2 error ||ours - reference|| / ||reference||."""
    ours = np.asarray(ours, dtype=np.float64)
    reference = np.asarray(reference, dtype=np.float64)
    assert ours.shape == reference.shape, (ours.shape, reference.shape)
    return float(np.linalg.norm(ours - reference) / np.linalg.norm(reference))


def torch_state_to_numpy(state_dict) -> dict:
    """A torch state dict as name -> float numpy array."""
    return {k: v.detach().cpu().numpy() for k, v in state_dict.items()}
