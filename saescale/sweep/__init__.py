"""Sweeps: many SAEs over a grid of settings, trained together on one pass over the activations."""
