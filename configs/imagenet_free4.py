"""ImageNet, ResNet-50, FREE-4 (Shafahi et al.): the DEAT paper's ImageNet baseline.

Reproduces the FREE-4 row of the DEAT paper's ImageNet table (docs/algorithm.md
section 6): clean 61.02%, PGD-10 31.90%, PGD-50 30.93% (step 1/255), 52.4
hours in the paper's setup. Four replays per minibatch with one perturbation
carried across minibatches (original FREE); epochs divided by m as in FREE:
ceil(90 / 4) = 23, lr 0.1 x0.1 at epochs 10 and 17, batch 256 (global), SGD
momentum 0.9, L2 1e-4 (the standard ImageNet value), epsilon 4/255, alpha
6/255; random-resized-crop 224 + flip for training, resize 256 / center crop
224 for evaluation. 10,000 training images are held out for validation
(best checkpoint by PGD-10 on them, step 1/255).

Data: TFDS imagenet2012 needs ILSVRC2012_img_train.tar and
ILSVRC2012_img_val.tar (from image-net.org) in DATA_DIR/downloads/manual or
--manual_dir; the first run prepares TFRecords in --data_dir (hours, ~150 GB).

Command (all local GPUs through MirroredStrategy; 256 / 8 = 32 per GPU on 8 GPUs):
    bin/train --config=configs/imagenet_free4.py --workdir=runs/imagenet_free4 \\
        --data_dir=/data/tensorflow_datasets
"""

import math

from deat_tf import config

REPLAYS = 4


def get_config():
    return config.TrainConfig(
        dataset="imagenet2012",
        validation_size=10_000,
        image_size=224,
        augmentation="random_resized_crop_flip",
        shuffle_buffer=10_000,
        model="resnet50",
        method="free",
        attack_steps=REPLAYS,
        carry_perturbation=True,
        epsilon=4 / 255,
        step_size=6 / 255,
        scheduler="none",
        max_steps=REPLAYS,
        epochs=math.ceil(90 / REPLAYS),
        batch_size=256,
        optimizer="sgd",
        learning_rate=0.1,
        momentum=0.9,
        weight_decay=1e-4,
        lr_schedule="piecewise",
        lr_boundaries=(10, 17),
        lr_decay=0.1,
        validation_attack_steps=10,
        validation_step_size=1 / 255,
        test_attack_steps=10,
        test_step_size=1 / 255,
        train_accuracy_examples=2000,
    )
