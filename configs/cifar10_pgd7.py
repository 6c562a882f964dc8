"""CIFAR-10, PreAct-ResNet18, PGD-7 adversarial training (Madry et al.), the paper's baseline.

Reproduces the PGD-7 row of the DEAT paper's CIFAR-10 table: the authors'
`pgd_cifar10.py` run, seed 0 (docs/algorithm.md, section 7): clean 82.33%,
PGD-100 49.48%, CW-20 48.64%, AutoAttack 45.95%, 157.2 minutes. Seven PGD
steps of 2/255 from a uniform start in the 8/255 ball, then one update on the
final iterate; otherwise the settings of configs/cifar10_deat.py (50 epochs,
lr 0.05 x0.1 at 50%/80%, batch 128, PyTorch SGD and initialization, L2 5e-4).

Remaining differences (docs/algorithm.md, section 6): those of
configs/cifar10_deat.py (validation split, full-batch epochs); the reference
start is not clipped to [0, 1] before the first step (ours is); and in the
reference each of the 8 training-mode forwards per minibatch updates
BatchNorm's moving statistics, here only the update's forward does (the
weights are the same; add --attack_batch_norm=update on one device for the
reference's statistics).

Command:
    bin/train --config=configs/cifar10_pgd7.py --workdir=runs/cifar10_pgd7
"""

from deat_tf import config


def get_config():
    return config.replace(
        config.load_sibling(__file__, "cifar10_deat"),
        method="pgd",
        attack_steps=7,
        step_size=2 / 255,
        scheduler="none",
    )
