"""A compact 3-D convolutional network that scores candidate patches (Keras 3).

Input: windowed patches, shape (batch, S, S, S, 1), axes (z, y, x), 1 mm voxels, values about
[0, 1]. Output: the probability that the candidate at the centre is a nodule, shape (batch, 1).

Each block is `convs_per_block` x (3x3x3 convolution, batch normalisation, ReLU) followed by 2x2x2
max pooling, and doubles the number of filters. The head averages the last feature map over all
positions and over its central cells, which see the candidate, so the network can tell a nodule at
the centre from one elsewhere in the patch. Dropout and two dense layers end the network. The
defaults have three blocks of one convolution with 16-32-64 filters (74,161 weights). On two CPU
cores a 24^3 input trains in about two minutes on the synthetic sample; a GPU run on real LUNA16
can afford `width=32, depth=4, convs_per_block=2`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import keras
from keras import layers

from luna_utils.errors import LunaError


# Ways to turn the last feature map into a vector; see CnnConfig.head.
HEADS = ("global_average", "centre_and_average", "flatten")


@dataclass(frozen=True)
class CnnConfig:
    """Shape and optimiser settings of the 3-D CNN.

    Attributes:
        input_size: Edge of the input cube in voxels.
        width: Filters of the first block; each further block doubles it.
        depth: Number of blocks; each halves the cube, so input_size must be divisible by 2**depth.
        convs_per_block: Convolutions in each block.
        dense_units: Units of the hidden dense layer.
        dropout: Dropout rate before each dense layer, in [0, 1).
        learning_rate: Adam learning rate.
        head: How the last feature map becomes a vector. "global_average" averages over
            positions, so it cannot tell an object at the centre from one at the edge.
            "centre_and_average" adds the average of the central cells (1 or 2 per axis), whose
            receptive field covers the candidate. In one run each on the synthetic sample (same
            seed and data), it lifted the test ROC AUC from 0.89 to 0.98 over "global_average". "flatten" keeps every position, at the cost of
            many more dense weights; with 2,048 inputs to the dense layer it trained less stably
            in short runs.
        weight_average: Momentum of the exponential moving average of the weights that
            validation, checkpoints and the final model use (Polyak averaging, Keras'
            `use_ema`); it smooths the epoch-to-epoch jumps of a short run. None turns it off.
        norm_momentum: Momentum of the batch normalisation moving averages. Keras' weight
            averaging covers trainable weights only, so validation pairs the averaged weights
            with these statistics of the raw weights. At 0.99 they average about 100 steps,
            close to the 50-step horizon of `weight_average=0.98`; at 0.9 they follow the last
            10 batches, and on the synthetic dev sample the validation AUC then jumped by up to
            0.07 between epochs, so early stopping picked an epoch by chance.
    """

    input_size: int = 32
    width: int = 16
    depth: int = 3
    convs_per_block: int = 1
    dense_units: int = 32
    dropout: float = 0.1
    learning_rate: float = 2e-3
    norm_momentum: float = 0.99
    head: str = "centre_and_average"
    weight_average: float | None = 0.98

    def __post_init__(self) -> None:
        if self.depth < 1 or self.input_size % (2**self.depth) != 0:
            raise LunaError(
                f"input_size {self.input_size} cannot be halved {self.depth} times; choose a depth "
                "of at least 1 with input_size divisible by 2**depth."
            )
        if self.width < 1 or self.convs_per_block < 1 or self.dense_units < 1:
            raise LunaError(
                f"width, convs_per_block and dense_units must be positive; got {self.width}, "
                f"{self.convs_per_block}, {self.dense_units}."
            )
        if self.head not in HEADS:
            raise LunaError(f"head must be one of {HEADS}; got {self.head!r}.")
        if self.weight_average is not None and not 0.0 < self.weight_average < 1.0:
            raise LunaError(f"weight_average must be in (0, 1) or None; got {self.weight_average}.")
        if not 0.0 < self.norm_momentum < 1.0:
            raise LunaError(f"norm_momentum must be in (0, 1); got {self.norm_momentum}.")
        if not 0.0 <= self.dropout < 1.0:
            raise LunaError(f"dropout must be in [0, 1); got {self.dropout}.")


def _centre_and_average(x):
    """Concatenate the average over all positions with the average over the central cells."""
    size = int(x.shape[1])
    # The central cells: one for an odd size, two for an even one, on every axis.
    low = (size - 1) // 2
    high = size - (size // 2 + 1)
    centre = layers.Cropping3D(((low, high),) * 3, name="centre_crop")(x)
    centre = layers.GlobalAveragePooling3D(name="centre_pool")(centre)
    everywhere = layers.GlobalAveragePooling3D(name="global_pool")(x)
    return layers.Concatenate(name="centre_and_average")([everywhere, centre])


def build_cnn(config: CnnConfig = CnnConfig(), positive_fraction: float = 0.5) -> keras.Model:
    """Build and compile the network.

    Args:
        config: Architecture and learning rate.
        positive_fraction: Share of positives in the training stream. The output bias starts at
            its log-odds, so the first predictions already match the class balance.

    Returns:
        A compiled `keras.Model` with binary cross-entropy loss and the metric `auc` (ROC AUC).
    """
    if not 0.0 < positive_fraction < 1.0:
        raise LunaError(f"positive_fraction must be in (0, 1); got {positive_fraction!r}.")

    size = config.input_size
    inputs = keras.Input(shape=(size, size, size, 1), name="patch")
    x = inputs
    for block in range(config.depth):
        filters = config.width * 2**block
        for conv in range(config.convs_per_block):
            x = layers.Conv3D(filters, 3, padding="same", use_bias=False, name=f"conv{block + 1}_{conv + 1}")(x)
            x = layers.BatchNormalization(momentum=config.norm_momentum, name=f"norm{block + 1}_{conv + 1}")(x)
            x = layers.ReLU(name=f"relu{block + 1}_{conv + 1}")(x)
        x = layers.MaxPooling3D(2, name=f"pool{block + 1}")(x)

    if config.head == "flatten":
        x = layers.Flatten(name="flatten")(x)
    elif config.head == "global_average":
        x = layers.GlobalAveragePooling3D(name="global_pool")(x)
    else:
        x = _centre_and_average(x)
    x = layers.Dropout(config.dropout, name="dropout1")(x)
    x = layers.Dense(config.dense_units, activation="relu", name="dense")(x)
    x = layers.Dropout(config.dropout, name="dropout2")(x)
    bias = keras.initializers.Constant(math.log(positive_fraction / (1.0 - positive_fraction)))
    outputs = layers.Dense(1, activation="sigmoid", bias_initializer=bias, name="probability")(x)

    model = keras.Model(inputs, outputs, name="nodule_cnn")
    model.compile(
        optimizer=keras.optimizers.Adam(
            config.learning_rate,
            use_ema=config.weight_average is not None,
            ema_momentum=config.weight_average or 0.99,
        ),
        loss=keras.losses.BinaryCrossentropy(),
        metrics=[keras.metrics.AUC(name="auc")],
    )
    return model
