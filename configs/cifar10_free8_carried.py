"""CIFAR-10, PreAct-ResNet18, original FREE-8 (Shafahi et al.): a perturbation carried along.

Shafahi et al.'s perturbation rule in the DEAT paper's CIFAR-10 setting: one
perturbation buffer that starts at zero and carries over from minibatch to
minibatch, clipped to the 8/255 ball only (the network sees clip(x + delta,
0, 1)), stepped by epsilon = 8/255 after each of the 8 replays; 50 epochs and
otherwise the settings of configs/cifar10_free8.py.

Not a published run: no table this project cites has a carried-delta
CIFAR-10 row (the DEAT paper's FREE-8 restarts at zero every minibatch:
configs/cifar10_free8.py). Shafahi et al.'s own CIFAR-10 runs differ in more
than the rule: a WideResNet-32-10, 80,000 optimizer updates (10,000
minibatches of 128 at m = 8, about 26 epochs), lr 0.1 x0.1 after 40,000 and
60,000 updates, weight decay 2e-4 (docs/algorithm.md, section 7). Use it to
compare the two FREE variants at the same budget.

Command:
    bin/train --config=configs/cifar10_free8_carried.py --workdir=runs/cifar10_free8_carried
"""

from deat_tf import config


def get_config():
    return config.replace(
        config.load_sibling(__file__, "cifar10_free8"),
        initialization=None,
        carry_perturbation=True,
    )
