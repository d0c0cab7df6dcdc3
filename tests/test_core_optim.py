"""vision_core.optim: schedules and losses against closed forms written here."""

import math

import numpy as np
import pytest

from vision_core import optim
from vision_core.errors import UserInputError


def test_warmup_cosine_and_linear():
  cosine = optim.make_schedule(base_lr=0.1, total_steps=100, warmup_steps=10)
  for step in (0, 5, 10, 40, 99):
    expected = 0.1 * step / 10 if step < 10 else 0.05 * (1 + math.cos(math.pi * (step - 10) / 90))
    assert float(cosine(step)) == pytest.approx(expected, abs=1e-7)
  linear = optim.make_schedule(base_lr=0.1, total_steps=100, warmup_steps=0,
                               decay_type='linear', end_lr=0.01)
  assert float(linear(50)) == pytest.approx(0.1 + (0.01 - 0.1) * 0.5)
  with pytest.raises(UserInputError, match='decay_type'):
    optim.make_schedule(base_lr=0.1, total_steps=10, decay_type='step')
  with pytest.raises(UserInputError, match='warmup_steps=10'):
    optim.make_schedule(base_lr=0.1, total_steps=10, warmup_steps=10)


def test_label_smoothed_cross_entropy_matches_numpy():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(5, 4)).astype(np.float32)
  labels = np.array([0, 3, 1, 1, 2])
  got = np.asarray(optim.softmax_cross_entropy(logits, labels, num_classes=4,
                                               label_smoothing=0.2))
  logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  targets = np.full((5, 4), 0.2 / 4)
  targets[np.arange(5), labels] += 0.8
  np.testing.assert_allclose(got, -(targets * logp).sum(-1), rtol=1e-5)


def test_optimizer_names():
  schedule = optim.make_schedule(base_lr=0.1, total_steps=10)
  for name in optim.OPTIMIZERS:
    optim.make_optimizer(name=name, schedule=schedule, grad_norm_clip=1.0, weight_decay=1e-4)
  with pytest.raises(UserInputError, match='expected one of sgd, adamw, adam'):
    optim.make_optimizer(name='lamb', schedule=schedule)
