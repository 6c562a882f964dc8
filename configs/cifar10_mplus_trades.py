"""CIFAR-10, PreAct-ResNet18, M+TRADES: TRADES whose attack step count K follows the M+ rule.

Reproduces the M+TRADES row of the DEAT paper's CIFAR-10 table (docs/algorithm.md
sections 4 and 6): clean 79.98%, PGD-100 51.43%, CW-20 48.61%, AutoAttack
47.52%, 317.7 minutes, against TRADES with a fixed K = 10 at 79.29% / 51.06% /
48.46% / 47.64% in 456.4 minutes. The attack maximises KL(f(x) || f(x_adv))
from x + 0.001 N(0, 1) with step 2/255; the update minimises
CE(f(x), y) + 6 KL(f(x) || f(x_adv)). K starts at 0, rises after epoch 0, then
whenever the epoch's gradient magnitude (of that full loss, at x_adv) exceeds
the threshold (gamma 1.01), up to K_max 10. Otherwise the settings of
configs/cifar10_deat.py. For plain TRADES pass --scheduler=none --attack_steps=10.

Command:
    bin/train --config=configs/cifar10_mplus_trades.py --workdir=runs/cifar10_mplus_trades
"""

from deat_tf import config


def get_config():
    return config.replace(
        config.load_sibling(__file__, "cifar10_deat"),
        method="trades",
        beta=6.0,
        attack_steps=None,
        step_size=2 / 255,
        scheduler="magnitude",
        gamma=1.01,
        max_steps=10,
    )
