"""ImageNet, ResNet-50, FREE-4 (Shafahi et al.): the DEAT paper's ImageNet baseline.

Reproduces the FREE-4 row of the DEAT paper's ImageNet table: the authors'
`free_imagenet.py` run with its configs_free.yml (docs/algorithm.md, section
7): clean 61.02%, PGD-10 31.90%, PGD-50 30.93% (step 1/255), 52.4 hours in
the paper's setup. Four replays per minibatch with one perturbation carried
across minibatches (original FREE), stepped by alpha = 4/255 = epsilon;
epochs divided by m as in FREE: ceil(90 / 4) = 23; lr 0.1 x0.1 every
ceil(30 / 4) = 8 epochs, i.e. from 0-based epochs 8 and 16; batch 256
(global), SGD momentum 0.9 with PyTorch's momentum rule, L2 1e-4,
torchvision's ResNet-50 initialization (init pytorch); random-resized-crop
224 + flip for training, resize 256 / centre crop 224 for evaluation.

Remaining differences (docs/algorithm.md, section 6): 10,000 training images
are held out for validation (best checkpoint by PGD-10 on them, step 1/255;
the reference holds out nothing);
epochs are full batches of a shuffled stream with a 10,000-image shuffle
buffer (the reference shuffles the whole training set); under
MirroredStrategy each GPU carries the slice of the perturbation for its part
of the global batch, as one buffer split over GPUs.

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
        init="pytorch",
        method="free",
        attack_steps=REPLAYS,
        carry_perturbation=True,
        epsilon=4 / 255,
        step_size=4 / 255,
        scheduler="none",
        max_steps=REPLAYS,
        epochs=math.ceil(90 / REPLAYS),
        batch_size=256,
        optimizer="sgd_pytorch",
        learning_rate=0.1,
        momentum=0.9,
        weight_decay=1e-4,
        lr_schedule="piecewise",
        # FREE's x0.1 every ceil(30 / m) epochs: the first decayed epochs (0-based) are 8 and 16.
        lr_boundaries=(math.ceil(30 / REPLAYS), 2 * math.ceil(30 / REPLAYS)),
        lr_decay=0.1,
        validation_attack_steps=10,
        validation_step_size=1 / 255,
        test_attack_steps=10,
        test_step_size=1 / 255,
        train_accuracy_examples=2000,
    )
