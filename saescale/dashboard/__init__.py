"""The feature dashboard: a static, offline browser of an SAE's latents built from one pass over its activation
cache (``saescale dashboard``; docs/dashboard.md)."""
