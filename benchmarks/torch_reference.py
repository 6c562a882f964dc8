"""A PyTorch M+DEAT loop that follows the authors' FAST script, for the twin run.

Written here from the structure of `FAST training/cifar10/mdeat_cifar10.py`
(github.com/TrustAI/DEAT), adapted to MNIST images in [0, 1] without input
normalisation (mean 0, std 1, one channel) and trained in plain float32 or
float64 instead of apex mixed precision. Per minibatch (X, y) with replay
count r:

    delta = the given start (the script draws U(-tau, tau); it is NOT clipped
            so that X + delta lies in [0, 1] before the first forward)
    repeat r times:
        loss = mean CE(model(X + delta), y); opt.zero_grad(); loss.backward()
        grad = delta.grad
        delta = clamp(delta + alpha * sign(grad), -epsilon, epsilon)
        delta = clamp(delta, 0 - X, 1 - X)
        opt.step()                       (SGD, momentum, coupled weight decay)
        delta.grad.zero_() unless this was the last replay
    grad_mag += sum |grad|               (the last replay's input gradient)
    scheduler.step()                     (MultiStepLR, once per minibatch)

and after every epoch the M+ rule on the epoch sum grad_mag. The network is
fast_adversarial's MNIST net (`MNIST/mnist_net.py`): conv 16 (4x4, stride 2,
padding 1) - conv 32 (same) - linear 100 - linear 10, ReLUs. Needs PyTorch
(`pip install -e .[twin]`); nothing in the package imports this file.
"""

import numpy as np
import torch
from torch import nn


def mnist_net(dtype=torch.float32):
    """fast_adversarial's MNIST network, with PyTorch's default initialization.

    Args:
        dtype: torch.float32 or torch.float64.

    Returns:
        An `nn.Sequential`.
    """
    network = nn.Sequential(
        nn.Conv2d(1, 16, 4, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 32, 4, stride=2, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(32 * 7 * 7, 100),
        nn.ReLU(),
        nn.Linear(100, 10),
    )
    return network.to(dtype)


def _torch_layers(network):
    return [module for module in network if isinstance(module, (nn.Conv2d, nn.Linear))]


def torch_weights_as_keras(network, feature_shape=(7, 7, 32)):
    """The PyTorch network's weights in the layout of `deat_tf.models.mnist_cnn`.

    Convolution kernels go from [out, in, h, w] to [h, w, in, out]; dense ones
    are transposed, and the first dense layer's rows are reordered from
    PyTorch's (channel, height, width) flattening to Keras' (height, width,
    channel).

    Args:
        network: The `mnist_net` network.
        feature_shape: (height, width, channels) of the last convolution's output.

    Returns:
        A list of numpy arrays for `keras_model.set_weights`.
    """
    height, width, channels = feature_shape
    weights = []
    first_dense = True
    for module in _torch_layers(network):
        kernel = module.weight.detach().cpu().numpy()
        bias = module.bias.detach().cpu().numpy()
        if isinstance(module, nn.Conv2d):
            kernel = kernel.transpose(2, 3, 1, 0)
        else:
            if first_dense:
                units = kernel.shape[0]
                kernel = kernel.reshape(units, channels, height, width)
                kernel = kernel.transpose(0, 2, 3, 1).reshape(units, -1)
                first_dense = False
            kernel = kernel.T
        weights += [kernel, bias]
    return weights


def weight_difference(network, keras_weights):
    """Largest absolute and relative difference between the two networks' weights.

    Args:
        network: The PyTorch network.
        keras_weights: `keras_model.get_weights()` of the Keras twin.

    Returns:
        (max |difference|, max |difference| / max |weight|) over all tensors.
    """
    largest_difference = 0.0
    largest_weight = 0.0
    for mine, theirs in zip(torch_weights_as_keras(network), keras_weights):
        largest_difference = max(largest_difference, float(np.max(np.abs(mine - theirs))))
        largest_weight = max(largest_weight, float(np.max(np.abs(mine))))
    return largest_difference, largest_difference / largest_weight


class MPlusRule:
    """The script's replay-count rule, on the epoch sums of the statistic.

    Args:
        gamma: Threshold factor.
        max_replays: Cap on r.
    """

    def __init__(self, gamma, max_replays):
        self.gamma = gamma
        self.max_replays = max_replays
        self.replays = 1
        self.threshold = None

    def end_epoch(self, epoch, magnitude):
        """Applies the rule after epoch `epoch` (from 0) with epoch sum `magnitude`."""
        if epoch == 0:
            self.replays += 1
        elif epoch == 1:
            self.threshold = self.gamma * magnitude
        elif magnitude > self.threshold and self.replays < self.max_replays:
            self.threshold = self.gamma * magnitude
            self.replays += 1


class ReferenceTrainer:
    """The script's optimizer, schedule and replay loop around one network.

    Args:
        network: The `mnist_net` network.
        learning_rate: SGD rate before the drops.
        momentum: SGD momentum.
        weight_decay: SGD's coupled weight decay.
        milestones: Minibatch counts after which the rate is multiplied by 0.1
            (MultiStepLR stepped once per minibatch).
        epsilon: L-infinity radius.
        step_size: alpha.
        learning_rate_dtype: None, or a numpy dtype to which each minibatch's
            rate is rounded for its updates (MultiStepLR keeps its exact value
            for the next minibatch). Keras' step schedules compute in float32
            even in a float64 model, so the float64 twin rounds to float32.
    """

    def __init__(
        self,
        network,
        learning_rate,
        momentum,
        weight_decay,
        milestones,
        epsilon,
        step_size,
        learning_rate_dtype=None,
    ):
        self.network = network
        self.optimizer = torch.optim.SGD(
            network.parameters(), lr=learning_rate, momentum=momentum, weight_decay=weight_decay
        )
        self.scheduler = torch.optim.lr_scheduler.MultiStepLR(
            self.optimizer, milestones=list(milestones), gamma=0.1
        )
        self.learning_rate_dtype = learning_rate_dtype
        self.epsilon = epsilon
        self.step_size = step_size
        network.train()

    def train_minibatch(self, images, labels, start, replays):
        """One minibatch of r replays, as the script runs it.

        Args:
            images: [batch, 1, 28, 28] tensor in [0, 1].
            labels: [batch] int64 tensor.
            start: The random start delta, same shape as `images`.
            replays: r.

        Returns:
            (loss of the last replay, sum of |grad| of the last replay, the
            learning rate the updates used).
        """
        scheduled = [group["lr"] for group in self.optimizer.param_groups]
        if self.learning_rate_dtype is not None:
            for group, rate in zip(self.optimizer.param_groups, scheduled):
                group["lr"] = float(self.learning_rate_dtype(rate))
        used = self.optimizer.param_groups[0]["lr"]
        delta = start.clone()
        delta.requires_grad = True
        for replay in range(replays):
            output = self.network(images + delta)
            loss = nn.functional.cross_entropy(output, labels)
            self.optimizer.zero_grad()
            loss.backward()
            grad = delta.grad.detach()
            delta.data = torch.clamp(
                delta + self.step_size * torch.sign(grad), -self.epsilon, self.epsilon
            )
            delta.data = torch.max(torch.min(delta, 1 - images), 0 - images)
            self.optimizer.step()
            if replay + 1 < replays:
                delta.grad.zero_()
        magnitude = torch.sum(grad.abs())
        for group, rate in zip(self.optimizer.param_groups, scheduled):
            group["lr"] = rate
        self.scheduler.step()
        return float(loss.item()), float(magnitude.item()), used
