"""Build the CLIP BPE tokenizer files (vocab.json, merges.txt) from OpenAI's `bpe_simple_vocab_16e6.txt.gz`.

The result ships in `customnet_jax/assets/clip_tokenizer/`; this script documents how it was made:

    pip download --no-deps open-clip-torch -d /tmp/oc   # the .gz lives inside that wheel
    python scripts/build_clip_tokenizer.py /path/to/bpe_simple_vocab_16e6.txt.gz customnet_jax/assets/clip_tokenizer
"""

import gzip
import json
import pathlib
import sys


def bytes_to_unicode() -> dict[int, str]:
    """OpenAI's reversible byte -> printable unicode table."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars = keep[:]
    extra = 0
    for b in range(256):
        if b not in keep:
            keep.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(keep, (chr(c) for c in chars), strict=True))


def main(bpe_path: str, out_dir: str) -> None:
    lines = gzip.open(bpe_path).read().decode("utf-8").split("\n")
    merges = lines[1 : 49152 - 256 - 2 + 1]  # 48,894 merges, as OpenAI's simple_tokenizer
    vocab = list(bytes_to_unicode().values())
    vocab += [v + "</w>" for v in vocab]
    vocab += ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}, ensure_ascii=False))
    (out / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    print(f"vocab {len(vocab)}, merges {len(merges)} -> {out}")


if __name__ == "__main__":
    main(*sys.argv[1:3])
