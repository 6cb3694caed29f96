"""Sharded CustomNet training: mesh and sharding rules, optimizer, train state, the step, checkpoints, the loop.

    sharding.py    device mesh (data x fsdp), the path/shape -> PartitionSpec rules, config validation
    optimizer.py   AdamW (text K/V at 10x lr), warm-up, clipping, EMA decay
    state.py       the train state pytree (trainable UNet + cc_projection, optimizer, step, RNG) and frozen parts
    step.py        the loss (docs/model.md §7) and the jitted, sharded train step
    checkpoint.py  orbax CheckpointManager (async, keep K, grain iterator state, config), SIGTERM
    loop.py        the training loop: data, logging (text + JSON lines), MFU, checkpoints, export
    synthetic.py   an in-memory random data source in the pipeline's batch format (tests, smoke runs)
"""
