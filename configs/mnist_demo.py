"""MNIST demo: M+DEAT on the embedded 10k-digit sample, offline, in about a minute on 2 CPU cores.

Draft.
"""

from deat_tf import config


def get_config():
    return config.TrainConfig(
        dataset="mnist_sample",
        validation_size=1000,
        model="mnist_cnn",
        method="deat",
        epsilon=0.3,
        step_size=0.375,
        scheduler="magnitude",
        gamma=1.0,
        max_steps=8,
        epochs=10,
        batch_size=100,
        optimizer="adam",
        learning_rate=5e-3,
        weight_decay=0.0,
        lr_schedule="cyclic",
        lr_peak=0.4,
        validation_attack_steps=10,
        test_attack_steps=20,
        train_accuracy_examples=1000,
    )
