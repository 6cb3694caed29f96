"""Ahead-of-time compilation of the project's programs for TPU slices, on a machine without a TPU (libtpu's
compile-only topologies): memory per chip against HBM, FLOPs, bytes accessed and the compiler's time estimate."""
