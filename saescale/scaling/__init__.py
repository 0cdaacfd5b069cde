"""Scaling laws of sweeps of SAEs: load results, fit the joint L(n, k), the compute frontier L(C),
n_opt(C), L(N_model) and the lr rule, and plot them (see each module's docstring for the maths)."""
