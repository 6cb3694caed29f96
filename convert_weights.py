"""Convert released PyTorch checkpoints into model folders (for sample.py / train.py --checkpoint), and back.

  python convert_weights.py --input customnet_v1.pt --output models/customnet_v1
  python convert_weights.py --input customnet_inpaint_v1.pt --output models/customnet_inpaint_v1
  python convert_weights.py --input 105000.ckpt --ema --output models/zero123
  # zero123 -> a CustomNet ready for training (text K/V added, CLIP text encoder from a transformers folder):
  python convert_weights.py --input 105000.ckpt --text-encoder clip-vit-large-patch14 --text-kv-init zeros \
      [--background] --output models/customnet_init
  python convert_weights.py --input models/customnet_v1 --to-pytorch --output exported/customnet_v1
      # -> exported/customnet_v1.safetensors and exported/customnet_v1.pt
  # LoRA adapters (train.py --config configs/lora.py): merged into a model folder, or exported in PEFT's layout
  python convert_weights.py --input customnet_jax/assets/demo_model --merge-lora runs/lora/adapter.safetensors:0.8 \
      --output models/demo_ringed
  python convert_weights.py --input runs/lora/adapter.safetensors --to-peft --output exported/ringed_peft

Checkpoints are read without executing any pickle code, tensor by tensor (peak memory ~ one model copy).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

from customnet_jax.convert.layouts import FORMATS
from customnet_jax.convert.readers import CheckpointFormatError
from customnet_jax.model_folder import NotAModelFolderError
from customnet_jax.models.customnet import CustomNetConfig
from customnet_jax.weights.rules import CheckpointMismatchError


def load_model_config(path: str | pathlib.Path) -> CustomNetConfig:
    """A model config from a configs/*.py file (its get_config().model) or a JSON file (a model folder's
    config.json, or a bare CustomNetConfig dict)."""
    from customnet_jax.config_files import from_dict, load_config

    path = pathlib.Path(path)
    if path.suffix == ".py":
        return load_config(path).model
    if path.is_dir():
        path = path / "config.json"
    data = json.loads(path.read_text())
    return from_dict(CustomNetConfig, data.get("model", data))


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", required=True, help="checkpoint file or folder (or a model folder with --to-pytorch)")
    p.add_argument("--output", required=True, help="model folder to write (or the export's path stem)")
    p.add_argument("--format", default="auto", choices=["auto", *FORMATS], help="input format (default: detected)")
    p.add_argument("--ema", action="store_true", help="zero123 .ckpt: use the EMA UNet weights (model_ema.*)")
    p.add_argument("--text-encoder", metavar="DIR", help="transformers CLIP text folder: zero123 -> CustomNet")
    p.add_argument("--tokenizer", metavar="DIR", help="folder with vocab.json + merges.txt (default: the CLIP "
                   "folder's, else the shipped openai/clip-vit-large-patch14 tokenizer)")
    p.add_argument("--text-kv-init", default="random", choices=["random", "zeros"],
                   help="new text K/V: random as the original, or zeros (starts exactly as zero123)")
    p.add_argument("--background", action="store_true", help="widen conv_in 8 -> 12 with zeros (composition model)")
    p.add_argument("--to-pytorch", action="store_true", help="export a model folder to CustomNet-layout "
                   "<output>.safetensors and <output>.pt")
    p.add_argument("--merge-lora", action="append", default=[], metavar="FILE[:SCALE]",
                   help="merge LoRA adapter file(s) into the model folder --input, writing the folder --output")
    p.add_argument("--to-peft", action="store_true", help="export the LoRA adapter file --input as a PEFT adapter "
                   "folder --output (adapter_config.json + adapter_model.safetensors, PyTorch CustomNet names)")
    p.add_argument("--config", metavar="FILE", help="model config (configs/*.py or JSON) instead of the format's "
                   "full-size config sized from the checkpoint; needed for models whose attention heads / GroupNorm "
                   "groups differ from SD-1.x's")
    p.add_argument("--prediction-type", choices=["epsilon", "v_prediction"],
                   help="what the UNet predicts, for a file that does not record its diffusion config (default: "
                   "read from the file's record or its `betas`; plain SD 1.x betas are taken as epsilon)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random text K/V")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        if args.merge_lora or args.to_peft:  # LoRA steps: customnet_jax/convert/lora_export.py
            from customnet_jax.convert.lora_export import export_peft, merge_into_folder

            if args.to_peft:
                export_peft(args.input, args.output, overwrite=args.overwrite)
            else:
                merge_into_folder(args.input, args.merge_lora, args.output, overwrite=args.overwrite)
            return 0
        if args.to_pytorch:
            from customnet_jax.convert.exporters import export_pytorch

            export_pytorch(args.input, args.output, progress=not args.no_progress, overwrite=args.overwrite)
            return 0
        from customnet_jax.convert.importers import convert_checkpoint

        config = load_model_config(args.config) if args.config else None
        convert_checkpoint(args.input, args.output, format=args.format, ema=args.ema, text_encoder=args.text_encoder,
                           tokenizer=args.tokenizer, text_kv_init=args.text_kv_init, background=args.background,
                           config=config, seed=args.seed, progress=not args.no_progress, overwrite=args.overwrite,
                           prediction_type=args.prediction_type)
    except (CheckpointFormatError, CheckpointMismatchError, NotAModelFolderError, FileNotFoundError,
            FileExistsError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
