"""CIFAR-10, PreAct-ResNet18, FGSM-RS ("fast" adversarial training, Wong et al. 2020).

Wong et al.'s FGSM-RS CIFAR-10 setting (their `train_fgsm.py` defaults;
docs/algorithm.md, section 7): a uniform random start in the 8/255 ball, one
FGSM step of alpha = 10/255 (1.25 epsilon), one update; 15 epochs with a
cyclic learning rate 0 -> 0.2 -> 0 peaking at half of training, batch 128,
SGD momentum 0.9 (PyTorch's rule), L2 5e-4, PreAct-ResNet18 with PyTorch's
initialization. The DEAT paper's table has no FGSM-RS row; Wong et al. report
roughly 84% clean and 46% PGD-50 accuracy for this setting (their paper, not
re-measured here).

Remaining differences (docs/algorithm.md, section 6): the reference trains in
mixed precision (apex O2, half-precision weights and activations), here in
float32; its early-stopping variant checks PGD on a training minibatch, here
the best checkpoint is chosen by validation PGD-10 on 1,000 held-out images,
which also guards against catastrophic overfitting (robust accuracy
collapsing within an epoch); the triangular schedule is evaluated after each
minibatch (one minibatch ahead of PyTorch's CyclicLR); and the reference's
two training-mode forwards per minibatch both update BatchNorm's moving
statistics (--attack_batch_norm=update on one device).

Command:
    bin/train --config=configs/cifar10_fgsm_rs.py --workdir=runs/cifar10_fgsm_rs
"""

from deat_tf import config


def get_config():
    return config.replace(
        config.load_sibling(__file__, "cifar10_deat"),
        method="fgsm_rs",
        attack_steps=None,
        step_size=10 / 255,
        scheduler="none",
        epochs=15,
        learning_rate=0.2,
        lr_schedule="cyclic",
        lr_peak=0.5,
    )
