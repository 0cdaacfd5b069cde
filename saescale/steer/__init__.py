"""Steering a causal LM with an SAE latent: :func:`steer` adds (or clamps) the latent's raw-space decoder
direction at a hook point (:mod:`saescale.steer.hook`, with the maths); :func:`compare` gives greedy
continuations with and without it (:mod:`saescale.steer.generate`); :func:`side_by_side` shows them."""

from saescale.steer.display import side_by_side
from saescale.steer.generate import Continuations, compare, greedy, prompt_ids
from saescale.steer.hook import latent_activation, latent_direction, steer, steering_delta

__all__ = ["Continuations", "compare", "greedy", "latent_activation", "latent_direction", "prompt_ids",
           "side_by_side", "steer", "steering_delta"]
