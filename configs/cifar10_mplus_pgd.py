"""CIFAR-10, PreAct-ResNet18, M+PGD: PGD-AT whose step count K follows the M+ rule.

Reproduces the M+PGD row of the DEAT paper's CIFAR-10 table (docs/algorithm.md
sections 4 and 6): clean 83.43%, PGD-100 45.94%, CW-20 45.66%, AutoAttack
42.57%, 94.8 minutes. K starts at 0 (epoch 0 trains on the random start),
rises after epoch 0, then whenever the epoch's gradient magnitude exceeds the
threshold (gamma 1.01), up to K_max 7; step 2/255. Otherwise the settings of
configs/cifar10_deat.py.

Command:
    bin/train --config=configs/cifar10_mplus_pgd.py --workdir=runs/cifar10_mplus_pgd
"""

from deat_tf import config


def get_config():
    return config.replace(
        config.load_sibling(__file__, "cifar10_deat"),
        method="pgd",
        attack_steps=None,
        step_size=2 / 255,
        scheduler="magnitude",
        gamma=1.01,
        max_steps=7,
    )
