"""CIFAR-10, PreAct-ResNet18, M+PGD: PGD-AT whose step count K follows the M+ rule.

Cites the M+PGD row of the DEAT paper's CIFAR-10 table (docs/algorithm.md,
sections 4 and 7): clean 83.43%, PGD-100 45.94%, CW-20 45.66%, AutoAttack
42.57%, 94.8 minutes. K starts at 0 (epoch 0 trains on the random start),
rises after epoch 0, then whenever the epoch's gradient magnitude exceeds the
threshold (gamma 1.01), up to K_max 7; from a uniform start, each of the K
steps moves max(epsilon / K, 2/255) like the authors' current mpgd_cifar10.py:
8/255 at K = 1, 4/255 at K = 2, 8/765 at K = 3, then 2/255.
Otherwise the settings of configs/cifar10_deat.py (PyTorch SGD and
initialization included).

The rule differs from the one behind that row. The row came from an older
version of the authors' code: its statistic was the input gradient of the
attack loss at the last attack step (so M = 0 while K = 0), and it also
raised K whenever alpha K < epsilon, resetting the threshold, and stepped a
constant 2/255. Its epoch times
show K = 0, 1, 1, 2, 3, then 4 from epoch 5 to the end: the forced rise
alone set K. This recipe implements the authors' current rule (the epoch sum
of the training loss's input gradient at the final iterate, no forced rise),
so expect another K trace and with it another cost and accuracy: the
published figures are what the method reached under the older rule, not a
prediction for this one. Other remaining differences: those of
configs/cifar10_pgd7.py.

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
        step_size_rule="max_epsilon_over_steps",
        scheduler="magnitude",
        gamma=1.01,
        max_steps=7,
    )
