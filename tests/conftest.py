"""Test session set-up: CPU JAX with a persistent compilation cache under the project folder."""

import os
import pathlib

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
jax.config.update("jax_compilation_cache_dir", str(ROOT / ".cache" / "jax"))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)

# PyTorch references run single-threaded: beside XLA's thread pool on a 2-core machine, torch's own threads
# oversubscribe the cores and a tiny reference loop goes from 2 s to over a minute.
import torch  # noqa: E402

torch.set_num_threads(1)
