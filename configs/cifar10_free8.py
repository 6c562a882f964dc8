"""CIFAR-10, PreAct-ResNet18, FREE-8 as the DEAT paper ran it: a zero start every minibatch.

Reproduces the FREE-8 row of the DEAT paper's CIFAR-10 table: the authors'
`free_cifar10.py --max-iteration 8` run, seed 0 (docs/algorithm.md, section
7): clean 80.77%, PGD-100 48.54%, CW-20 47.11%, AutoAttack 44.79%, 162.4
minutes. That run restarts the perturbation at zero for every minibatch (so
the first of the 8 replays trains on the clean images) and steps alpha =
8/255; nothing is carried from one minibatch to the next. Each replay is one
forward and one backward and one update, for 50 epochs (400 replay-epochs,
against about 246 for M+DEAT); otherwise the settings of
configs/cifar10_deat.py.

This is not Shafahi et al.'s original FREE, which carries the perturbation
across minibatches: that is configs/cifar10_free8_carried.py.
Remaining differences: those of configs/cifar10_deat.py (validation split,
full-batch epochs).

Command:
    bin/train --config=configs/cifar10_free8.py --workdir=runs/cifar10_free8
"""

from deat_tf import config


def get_config():
    return config.replace(
        config.load_sibling(__file__, "cifar10_deat"),
        method="free",
        attack_steps=8,
        initialization="zero",
        step_size=8 / 255,
        carry_perturbation=False,
        scheduler="none",
    )
