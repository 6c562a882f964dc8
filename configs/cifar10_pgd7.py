"""CIFAR-10, PreAct-ResNet18, PGD-7 adversarial training (Madry et al.), the paper's baseline.

Reproduces the PGD-7 row of the DEAT paper's CIFAR-10 table (docs/algorithm.md
section 6): clean 82.33%, PGD-100 49.48%, CW-20 48.64%, AutoAttack 45.95%,
157.2 minutes. Seven PGD steps of 2/255 from a uniform random start, then one
update; otherwise the settings of configs/cifar10_deat.py (50 epochs, lr 0.05
x0.1 at 50%/80%, batch 128, L2 5e-4, 1,000 images held out for validation).

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
