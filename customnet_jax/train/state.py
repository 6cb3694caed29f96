"""The train state: a plain pytree of dicts, so that jit shardings, donation and orbax need nothing special.

    state  = {"params": trainable (train.trainable: UNet + cc_projection by default), "opt_state": optax state,
              "step": int32 (), "rng": uint32 (2,) base key, ["ema": EMA of params]}  updated every step, checkpointed
    frozen = {"params": the rest (VAE, CLIP encoders; a LoRA's base), ["null_text": (1, 77, D) embedding of ""]}
             rebuilt at start (from `init_from` or the seed), never updated, not checkpointed

The model structure is an `nnx.GraphDef`; `nnx.merge(graphdef, state["params"], frozen["params"])` gives the
CustomNet inside the step. Parameters are float32 (the master weights) whatever the compute dtype.
"""

from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, traverse_util

from customnet_jax.experiment import TRAINABLE, Config
from customnet_jax.model_folder import load_model, param_tree, read_folder
from customnet_jax.models.build import abstract_model
from customnet_jax.models.conv_in import CONV_IN, can_widen, widen_conv_in
from customnet_jax.models.customnet import CustomNet, CustomNetConfig
from customnet_jax.models.init import initial_params as random_params
from customnet_jax.models.lora import LoraConfig, adapt
from customnet_jax.models.param_rules import compile_rules, first_match, is_bool

COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def model_builder(model: CustomNetConfig, compute_dtype: str = "float32", remat: bool | str = False,
                  attention: str | None = None, lora: LoraConfig | None = None) -> Callable:
    """The model's constructor (with low-rank adapters when `lora.rank` > 0), for `abstract_model`."""
    dtype = COMPUTE_DTYPES[compute_dtype]
    return lambda: adapt(CustomNet(model, rngs=nnx.Rngs(0), dtype=dtype, remat=remat, attention=attention),
                         lora or LoraConfig())


def is_trainable(path: tuple, value: Any = None, rules: Any = TRAINABLE) -> bool:
    """Whether `path` trains under the (regex, bool) `rules` (train.trainable); first match wins."""
    del value
    return first_match(compile_rules(rules, "train.trainable", is_bool, "True or False"), path, "train.trainable")


def graphdef_and_shapes(config: Config) -> tuple[nnx.GraphDef, dict]:
    """The model structure (compute dtype and remat of `config.train`) and every parameter's shape, flat."""
    train = config.train
    remat = train.remat and train.remat_policy
    model = abstract_model(model_builder(config.model, train.compute_dtype, remat, train.attention or None,
                                         config.lora))
    graphdef, state = nnx.split(model)
    flat = traverse_util.flatten_dict(nnx.to_pure_dict(state))
    return graphdef, {path: tuple(x.shape) for path, x in flat.items()}


def split_params(flat: dict, rules: Any = TRAINABLE) -> tuple[dict, dict]:
    """Flat path -> array  ->  (trainable nested dict, frozen nested dict), by the (regex, bool) `rules`."""
    compiled = compile_rules(rules, "train.trainable", is_bool, "True or False")
    trains = {p: first_match(compiled, p, "train.trainable") for p in flat}
    if not any(trains.values()):
        raise ValueError("train.trainable: no parameter trains; the rules select none of the model's parameters")
    trainable = {p: v for p, v in flat.items() if trains[p]}
    frozen = {p: v for p, v in flat.items() if not trains[p]}
    return traverse_util.unflatten_dict(trainable), traverse_util.unflatten_dict(frozen)


def join_params(*trees: dict) -> dict:
    """Nested dicts with disjoint paths -> one nested dict."""
    flat = {}
    for tree in trees:
        flat.update(traverse_util.flatten_dict(tree))
    return traverse_util.unflatten_dict(flat)


@dataclasses.dataclass(frozen=True)
class InitReport:
    """Where the initial parameters came from: `loaded` / `widened` / `fresh` / `ignored` are path lists."""

    source: str
    loaded: list = dataclasses.field(default_factory=list)
    widened: list = dataclasses.field(default_factory=list)
    fresh: list = dataclasses.field(default_factory=list)
    ignored: list = dataclasses.field(default_factory=list)

    def summary(self) -> str:
        if self.source == "random":
            return f"random init ({len(self.fresh)} parameters)"
        text = f"from {self.source}: {len(self.loaded)} loaded"
        if self.widened:
            text += f", widened with zero input channels: {['/'.join(map(str, p)) for p in self.widened]}"
        if self.fresh:
            groups = sorted({'/'.join(map(str, p[:2])) for p in self.fresh})
            more = " ..." if len(groups) > 6 else ""
            text += f", {len(self.fresh)} freshly initialised ({', '.join(groups[:6])}{more})"
        if self.ignored:
            text += f", {len(self.ignored)} in the folder not used"
        return text


def initial_params(config: Config, shapes: dict, *, folder_params: dict | None = None,
                   source: str = "random") -> tuple[dict, InitReport]:
    """Flat path -> numpy float32 for every parameter of `shapes`: from `folder_params` where present (conv_in
    widened with zeros if the model has more input channels), fresh random draws (seed) for the rest."""
    if folder_params is None:
        report = InitReport("random", fresh=sorted(shapes, key=str))
        return random_params(shapes, config.train.seed, config.init), report
    fresh_values = random_params({p: s for p, s in shapes.items() if p not in folder_params}, config.train.seed,
                                 config.init)
    out, report = {}, InitReport(source)
    for path, shape in shapes.items():
        value = folder_params.get(path)
        if value is None:
            out[path] = fresh_values[path]
            report.fresh.append(path)
        elif tuple(value.shape) == tuple(shape):
            out[path] = np.asarray(value, np.float32)
            report.loaded.append(path)
        elif path == CONV_IN and can_widen(tuple(value.shape), tuple(shape)):
            out[path] = widen_conv_in(value, shape[2])
            report.widened.append(path)
        else:
            raise ValueError(f"init_from {source}: parameter {'/'.join(map(str, path))} has shape {tuple(value.shape)} "
                             f"in the folder but {tuple(shape)} in this model; the folder's model config does not fit "
                             "config.model (only the UNet input channels may grow, e.g. 8 -> 12)")
    report.ignored.extend(sorted(set(folder_params) - set(shapes), key=str))
    return out, report


def init_folder_mismatches(config: Config, path: str | pathlib.Path) -> list[str]:
    """Settings of the init_from folder that the run's config contradicts without a shape to show it (a latent
    scale or a schedule trained for another VAE / objective): each one silently mis-trains the model."""
    folder = read_folder(path)
    checks = {"model.latent_scale": (folder.model.latent_scale, config.model.latent_scale),
              "diffusion.prediction_type": (folder.diffusion.prediction_type, config.diffusion.prediction_type),
              "diffusion.zero_terminal_snr": (folder.diffusion.zero_terminal_snr, config.diffusion.zero_terminal_snr)}
    return [f"{key} is {ours} here but {theirs} in {path}" for key, (theirs, ours) in checks.items() if theirs != ours]


def read_init_folder(path: str | pathlib.Path) -> dict:
    """A model folder's parameters, flat path -> numpy (see customnet_jax.model_folder)."""
    model, _ = load_model(path)
    flat = traverse_util.flatten_dict(param_tree(model))
    return {p: np.asarray(jax.device_get(v)) for p, v in flat.items()}


def new_state(params: dict, tx: Any, seed: int, ema: bool) -> dict:
    """The train state at step 0 (run under jit with out_shardings so that every leaf is a global array)."""
    state = {"params": params, "opt_state": tx.init(params), "step": jnp.zeros((), jnp.int32),
             "rng": jax.random.PRNGKey(seed)}
    if ema:
        state["ema"] = jax.tree.map(jnp.copy, params)
    return state
