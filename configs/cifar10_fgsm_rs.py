"""CIFAR-10, PreAct-ResNet18, FGSM-RS ("fast" adversarial training, Wong et al. 2020).

The FGSM-RS baseline in its own recipe: a uniform random start in the
epsilon-ball, one FGSM step of alpha = 10/255 (1.25 epsilon), one update;
15 epochs with a cyclic learning rate 0 -> 0.2 -> 0 peaking at 2/5 of
training, batch 128, SGD momentum 0.9, L2 5e-4. The DEAT paper's table
(docs/algorithm.md) has no FGSM-RS row; Wong et al. report roughly 84% clean and
46% PGD-50 accuracy for this setting (their paper, not re-measured here).
FGSM-RS can overfit catastrophically (robust accuracy collapsing within an
epoch); the best checkpoint, chosen by validation PGD-10, guards against it.

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
        lr_peak=0.4,
    )
