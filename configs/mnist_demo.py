"""MNIST demo: M+DEAT on the embedded 10,000-digit sample, offline, 1-2 minutes on 2 CPU cores.

The quick start of README.md (its output in docs/training.md). Trains the small
MNIST CNN with M+DEAT (replays r from 1, raised by the M+ rule with gamma 1.0 up to 8) against
epsilon = 0.3 on 7,000 of the sample's 8,000 training digits; the other 1,000
are the validation split (PGD-10, step 0.075), the sample's 2,000 test digits
get a final PGD-20 check. Adam with a cyclic learning rate 0 -> 5e-3 -> 0
(peak at 40%), batch 100, 8 epochs, alpha 0.375 (1.25 epsilon).

Measured on 2 CPU cores (docs/training.md has the output): r went 1, 2, 2, 3, 4, 4,
4, 4; validation robust accuracy (PGD-10) rose from 0% after epoch 1 to 84%
after epoch 8, clean 97%; test PGD-20 82%, clean 97.7%; 37 s of training
steps, 59 s for the whole run including validation, checkpoints and the
final test evaluation. bin/evaluate --preset=mnist on 1,000 test digits:
worst case over PGD-50x10, CW-50x10, APGD-CE and APGD-T 75.9%.
This is a demo of the machinery on a small sample, not a benchmark, and it
reproduces no published run (docs/algorithm.md, section 7): the optimizer and
schedule are those of Wong et al.'s MNIST FGSM-RS run, with Keras'
initialization; the customary MNIST evaluation is PGD-50 with 10 restarts,
step 0.01 (bin/evaluate --preset=mnist). benchmarks/mnist_efficiency.py
compares M+DEAT with FREE, PGD and FGSM-RS on this sample.

Command:
    bin/train --config=configs/mnist_demo.py --workdir=runs/mnist_demo
"""

from deat_tf import config


def get_config():
    return config.TrainConfig(
        dataset="mnist_sample",
        validation_size=1000,
        augmentation="none",
        model="mnist_cnn",
        method="deat",
        epsilon=0.3,
        step_size=0.375,
        scheduler="magnitude",
        gamma=1.0,
        max_steps=8,
        epochs=8,
        batch_size=100,
        optimizer="adam",
        learning_rate=5e-3,
        weight_decay=0.0,
        lr_schedule="cyclic",
        lr_peak=0.4,
        validation_attack_steps=10,
        test_attack_steps=20,
        train_accuracy_examples=1000,
    )
