"""CIFAR-100, PreAct-ResNet18, M+DEAT (gamma 1.01, r_max 8).

The CIFAR-10 M+DEAT recipe (configs/cifar10_deat.py) on CIFAR-100, with
CIFAR-100's mean/std inside the network: 50 epochs, lr 0.05 x0.1 at 50% and
80%, batch 128, L2 5e-4, epsilon 8/255, alpha 10/255, 1,000 training images
held out for validation. The DEAT paper also evaluates CIFAR-100; this
project has no reference figures recorded for it (docs/algorithm.md lists
CIFAR-10 and ImageNet), so compare against configs/cifar10_free8.py-style
baselines run with --dataset=cifar100.

Command:
    bin/train --config=configs/cifar100_deat.py --workdir=runs/cifar100_deat
"""

from deat_tf import config


def get_config():
    return config.replace(config.load_sibling(__file__, "cifar10_deat"), dataset="cifar100")
