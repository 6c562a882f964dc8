"""CIFAR-10, PreAct-ResNet18, FREE-8 (Shafahi et al.): eight replays of every minibatch.

Reproduces the FREE-8 row of the DEAT paper's CIFAR-10 table (docs/algorithm.md
section 6): clean 80.77%, PGD-100 48.54%, CW-20 47.11%, AutoAttack 44.79%,
162.4 minutes. As in the paper's comparison it runs the same 50 epochs as
M+DEAT (400 replay-epochs) with the perturbation carried from minibatch to
minibatch (original FREE) and alpha 10/255 like the other replay recipes;
otherwise the settings of configs/cifar10_deat.py.

Command:
    bin/train --config=configs/cifar10_free8.py --workdir=runs/cifar10_free8
"""

from deat_tf import config


def get_config():
    return config.replace(
        config.load_sibling(__file__, "cifar10_deat"),
        method="free",
        attack_steps=8,
        carry_perturbation=True,
        scheduler="none",
    )
