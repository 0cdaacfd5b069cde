"""Trainer.step: the early decoder step (inside backward, for memory) changes no arithmetic."""

import pytest
import torch

from saescale.sae.base import LossContext
from saescale.train.config import TrainConfig
from saescale.sae.base import PARAMS
from saescale.train.trainer import Trainer
from tests.helpers import make_sae


def run_steps(grad_clip: float, multi: bool, steps: int = 3) -> dict[str, torch.Tensor]:
    """Weights after ``steps`` Trainer steps; grad_clip > 0 disables the early decoder step."""
    sae = make_sae("topk", 256, 8, 16)
    cfg = TrainConfig(tokens=64 * 100, batch_size=64, lr=1e-2, progress=False, grad_clip=grad_clip,
                      multi_topk=multi, dead_tokens=64)  # latents die after one batch: AuxK is on
    trainer = Trainer(sae, cfg, loss_scale=1.0)
    g = torch.Generator().manual_seed(4)
    for _ in range(steps):
        trainer.step(torch.randn(64, 16, generator=g))
    return {p: getattr(sae, p).detach().clone() for p in PARAMS}


@pytest.mark.parametrize("multi", [False, True])
def test_early_decoder_step_is_bit_identical_to_the_joint_step(multi):
    early = run_steps(0.0, multi)
    joint = run_steps(1e30, multi)  # clipping at 1e30 scales gradients by exactly 1
    for p in PARAMS:
        assert torch.equal(early[p], joint[p]), p
    assert torch.allclose(early["W_dec"].norm(dim=1), torch.ones(256))


def test_backward_outside_a_training_step_does_not_touch_the_weights():
    """The early decoder step is a hook on W_dec; a user's own backward after training must not step it."""
    sae = make_sae("topk", 64, 4, 16)
    trainer = Trainer(sae, TrainConfig(progress=False, batch_size=32), loss_scale=1.0)
    trainer.step(torch.randn(32, 16))
    before = sae.W_dec.detach().clone()
    ctx = LossContext(torch.zeros(64, dtype=torch.bool), 8, 1 / 32, 1.0, False, 0.0)
    sae.loss_terms(torch.randn(32, 16), ctx).loss.backward()
    assert torch.equal(sae.W_dec.detach(), before)
    assert sae.W_dec.grad is not None  # an ordinary gradient, left for the user


def test_trained_sae_holds_no_hook_and_keeps_no_trainer_alive():
    """Before: the early-decoder-step hook stayed on W_dec, so the returned SAE kept the trainer and Adam alive."""
    import gc
    import weakref

    from saescale.data.synthetic import SyntheticConfig, SyntheticSource
    from saescale.sae.config import SAEConfig
    from saescale.train.run import new_trainer

    src = SyntheticSource(SyntheticConfig(d=16, features=32, k=2))
    cfg = TrainConfig(tokens=64 * 3, batch_size=64, progress=False, init_tokens=128)
    trainer = new_trainer(SAEConfig(n=64, k=4, normalize="none"), cfg, src, None)
    trainer.fit(src.batches(64))
    sae, alive = trainer.final_sae(), weakref.ref(trainer)
    del trainer
    gc.collect()
    assert alive() is None
    assert not sae.W_dec._post_accumulate_grad_hooks and all(p.grad is None for p in sae.parameters())


def test_training_counts_a_small_positive_activation_as_firing_as_eval_does():
    """One meaning of 'fires' (z > 0, saescale.sae.base.fires). Before: training needed z > 1e-3 while eval
    and L0 counted z > 0, so a latent at 5e-4 was live for eval and dead for AuxK."""
    trainer = Trainer(make_sae("topk", 64, 4, 16), TrainConfig(progress=False, batch_size=2, dead_tokens=1), 1.0)
    values, indices = torch.tensor([[5e-4, 0.0, 2.0, 0.0]]), torch.tensor([[3, 5, 7, 9]])
    trainer._update_dead(values, indices, 1)
    fired = trainer.state.since_fired == 0
    assert fired[3] and fired[7] and not fired[5] and not fired[9] and int(fired.sum()) == 2
