"""Make the built-in demo model from nothing: `python -m customnet_jax.demo` (or `make demo-model`).

    1. build the synthetic world (customnet_jax.data, tfds array_record)        workdirs/demo/data
    2. train the demo's own VAE on its pictures (autoencoder.py)
    3. an initial model folder: that VAE + random UNet, CLIPs, cc_projection     workdirs/demo/init
    4. precompute the frozen encoders' outputs once                              workdirs/demo/precomputed
    5. train.py's loop on the precomputed data (configs/demo.py)                  workdirs/demo/run
    6. ship it                                                                   customnet_jax/assets/demo_model
    7. the composition variant: stage 5's model + background channels, fine-tuned
       (configs/demo_composition.py)                                             workdirs/demo/composition
    8. ship it                                                     customnet_jax/assets/demo_composition_model
Each stage is skipped when its output exists, so an interrupted recipe continues where it stopped
(the training stages 5 and 7 resume from their last checkpoints). Each stage's minutes are logged.
The config files say where everything goes (train.init_from = <workdir>/init, data.path =
<workdir>/precomputed, the composition's train.init_from = <workdir>/run/model); the recipe adds only what it
measures: the demo VAE's latent scale.
"""

from __future__ import annotations

import argparse
import dataclasses
import pathlib
import shutil
import time

from customnet_jax.config_files import load_config, override
from customnet_jax.experiment import Config

ROOT = pathlib.Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "customnet_jax" / "assets" / "demo_model"
SHIPPED_COMPOSITION = ROOT / "customnet_jax" / "assets" / "demo_composition_model"


def log(message: str) -> None:
    print(f"[demo {time.strftime('%H:%M:%S')}] {message}", flush=True)


def raw_config(config: Config, workdir: pathlib.Path) -> Config:
    """The config reading the raw synthetic world (built in workdir/data on first use)."""
    return dataclasses.replace(config, data=dataclasses.replace(config.data, source="synthetic",
                                                                path=str(workdir / "data")))


def make_init_folder(config: Config, workdir: pathlib.Path, vae_steps: int, decoder_steps: int) -> pathlib.Path:
    """Stages 2-3: the demo VAE, then a model folder holding it beside randomly initialised networks."""
    from flax import nnx

    from customnet_jax.demo.autoencoder import AutoencoderTraining, train_autoencoder
    from customnet_jax.model_folder import param_tree, save_model_folder
    from customnet_jax.models.build import initialized_model
    from customnet_jax.models.customnet import CustomNet

    folder = pathlib.Path(config.train.init_from)
    if (folder / "config.json").is_file():
        log(f"initial model folder exists: {folder}")
        return folder
    vae, scale = train_autoencoder(raw_config(config, workdir), config.model.vae,
                                   AutoencoderTraining(steps=vae_steps, decoder_steps=decoder_steps), log=log)
    model_config = dataclasses.replace(config.model, latent_scale=round(scale, 5))
    model = initialized_model(lambda: CustomNet(model_config, rngs=nnx.Rngs(0)), seed=config.train.seed)
    params = param_tree(model)
    params["vae"] = param_tree(vae)
    save_model_folder(folder, params, model_config, config.diffusion,
                      provenance={"format": "customnet-jax demo init", "vae_steps": vae_steps,
                                  "decoder_steps": decoder_steps,
                                  "latent_scale": model_config.latent_scale})
    log(f"wrote the initial model folder {folder} (latent scale {model_config.latent_scale})")
    return folder


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(ROOT / "configs" / "demo.py"))
    parser.add_argument("--composition-config", default=str(ROOT / "configs" / "demo_composition.py"),
                        help="stage 7 ('' to skip it)")
    parser.add_argument("--vae-steps", type=int, default=1500)
    parser.add_argument("--decoder-steps", type=int, default=0, help="then the VAE decoder alone (measured: no gain)")
    parser.add_argument("--no-ship", action="store_true", help="do not copy the result into the package")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                        help="override a field of both config files (e.g. train.num_steps=8000)")
    args = parser.parse_args(argv)

    import jax

    jax.config.update("jax_compilation_cache_dir", str(ROOT / ".cache" / "jax"))
    from customnet_jax.data import precompute
    from customnet_jax.model_folder import load_model
    from customnet_jax.train.loop import train

    config = override(load_config(args.config), args.overrides)
    workdir = pathlib.Path(config.train.init_from).absolute().parent  # the config's <workdir>/init
    started = lap = time.time()

    def finished(what: str) -> None:
        nonlocal lap
        log(f"{what}: {(time.time() - lap) / 60:.1f} min")
        lap = time.time()

    init = make_init_folder(config, workdir, args.vae_steps, args.decoder_steps)
    finished("world and demo VAE (stages 1-3)")
    model, folder = load_model(init)
    latent_scale = folder.model.latent_scale  # measured on the demo VAE (stage 2)
    config = dataclasses.replace(config, model=dataclasses.replace(config.model, latent_scale=latent_scale))
    precomputed = pathlib.Path(config.data.path)
    if not any(precomputed.glob("**/dataset_info.json")):
        log("precomputing the frozen encoders' outputs")
        precompute(raw_config(config, workdir), model, precomputed, batch_size=64, name="demo")
    finished("precomputing (stage 4)")

    log("training (resumes from workdir/run/checkpoints if present)")
    train(config, workdir / "run", log=log)
    finished("training (stage 5)")
    exported = workdir / "run" / "model"

    def fine_tune(path: str, name: str, what: str) -> pathlib.Path:
        """train.py on config file `path` (its train.init_from: a model folder of an earlier stage), with the
        demo VAE's latent scale."""
        stage = override(load_config(path), args.overrides)
        stage = dataclasses.replace(stage, model=dataclasses.replace(stage.model, latent_scale=latent_scale))
        log(f"fine-tuning: {what} from {stage.train.init_from} (resumes from workdir/{name}/checkpoints)")
        train(stage, workdir / name, log=log)
        return workdir / name / "model"

    ship = [(exported, SHIPPED)]
    if args.composition_config:
        composition = fine_tune(args.composition_config, "composition", "the composition variant")
        finished("composition variant (stage 7)")
        ship.append((composition, SHIPPED_COMPOSITION))
    for source, destination in ship if not args.no_ship else []:
        if destination.exists():
            shutil.rmtree(destination)
        shutil.copytree(source, destination)
        log(f"shipped {source} -> {destination}")
    log(f"done in {(time.time() - started) / 60:.1f} min")


if __name__ == "__main__":
    main()
