"""The demo's own image encoder (customnet_jax/demo/image_encoder.py): after a short training on a small synthetic
world its embedding must tell which colour the object shows on which side far better than the random
initialisation's, on pictures it did not train on (a ridge probe from the embedding to the object's right-half
minus left-half mean colour: what a turn of the azimuth rearranges)."""

import dataclasses

import jax.numpy as jnp
import numpy as np
from flax import nnx

from configs import tiny
from customnet_jax.conditioning import clip_preprocess
from customnet_jax.data import builders, images, synthetic
from customnet_jax.demo.image_encoder import ImageEncoderTraining, explained, train_image_encoder
from customnet_jax.experiment import DataConfig
from customnet_jax.models.build import initialized_model
from customnet_jax.models.clip import CLIPImageEncoder


def sides(pictures: np.ndarray) -> np.ndarray:
    """(N, S, S, 3) objects on white in [-1, 1] -> (N, 3): mean colour of the object's right half minus its left."""
    out = []
    for picture in pictures:
        mask = (picture < 0.9).any(-1)
        columns = np.nonzero(mask)[1]
        right = np.arange(picture.shape[1])[None] >= np.median(columns)
        out.append(picture[mask & right].mean(0) - picture[mask & ~right].mean(0))
    return np.asarray(out)


def probe_r2(encoder: CLIPImageEncoder, train: np.ndarray, test: np.ndarray) -> float:
    """Ridge regression from the embedding to `sides`, fitted on `train` pictures, R^2 on `test`."""

    def features(pictures):
        embedding = np.asarray(encoder(clip_preprocess(jnp.asarray(pictures), encoder.config.image_size)))
        return np.concatenate([embedding, np.ones((len(pictures), 1))], axis=1)

    x = features(train)
    weights = np.linalg.solve(x.T @ x + 1e-2 * np.eye(x.shape[1]), x.T @ sides(train))
    return explained(features(test) @ weights, sides(test))


def test_trained_image_encoder_describes_the_object_layout(tmp_path):
    world = synthetic.named_world("demo", image_size=64)
    builders.build("synthetic", tmp_path, world=world, num_examples=2048, num_validation=4)
    config = tiny.get_config()
    config = dataclasses.replace(config, data=DataConfig(source="synthetic", path=str(tmp_path),
                                                         synthetic_examples=2048, synthetic_world="demo"))
    training = ImageEncoderTraining(steps=2500, examples=2048)
    trained = train_image_encoder(config, config.model.image_encoder, training, log=lambda _: None)

    unseen = [synthetic.scene(i, dataclasses.replace(world, seed=99)) for i in range(600)]
    pictures = np.stack([images.to_float(s.object) for s in unseen])
    random_start = initialized_model(lambda: CLIPImageEncoder(config.model.image_encoder, rngs=nnx.Rngs(0)), seed=0)
    trained_r2 = probe_r2(trained, pictures[:400], pictures[400:])
    random_r2 = probe_r2(random_start, pictures[:400], pictures[400:])
    # measured: 0.445 vs 0.097 (the recipe's 4000 steps on 4096 pictures: 0.73 vs 0.17 on 500 pictures)
    assert trained_r2 > 0.35 and trained_r2 > random_r2 + 0.25, (trained_r2, random_r2)
