"""``saescale steer``: greedy continuations of a prompt by the SAE's model, without and with one latent
steered (added at ``--scale`` or clamped at ``--clamp``) at the SAE's hook point, printed side by side."""

from __future__ import annotations

import shutil
import textwrap
from dataclasses import dataclass, field

from saescale.configs import check_valid, valid
from saescale.errors import SaescaleError

USAGE = "saescale steer SAE_DIR --latent I --prompt TEXT --scale S (or --clamp V)"


@dataclass
class SteerCommand:
    """Steer the SAE's model with one latent: greedy continuations of a prompt without and with it, side by side."""

    sae: str = field(default="", metadata={"positional": True})
    """SAE folder (cfg.json + sae.safetensors, e.g. runs/<run>/sae); required. The model and hook it was trained on are read from its cfg.json."""

    latent: int | None = valid(None, ">= 0")
    """Index of the latent to steer with (required), in 0..n-1 for an SAE of n latents."""

    prompt: str = ""
    """Text for the model to continue (required)."""

    scale: float | None = valid(None, "(-inf, inf)")
    """Add S units of the latent at every position: what the latent firing at S adds to the SAE's reconstruction (its decoder row mapped to the raw activation space; negative subtracts, 0 changes nothing). Give exactly one of --scale and --clamp."""

    clamp: float | None = valid(None, "(-inf, inf)")
    """Set the latent's activation to V at every position, replacing its contribution to the reconstruction and leaving the SAE's error untouched (0 ablates it). Give exactly one of --scale and --clamp."""

    tokens: int = valid(30, ">= 1")
    """New tokens to generate greedily (fewer if the model ends the text), with and without steering."""

    model: str = ""
    """Override the model recorded in the SAE's cfg.json (e.g. a local copy); empty = the recorded one."""

    hook: str = ""
    """Override the hook point recorded in the SAE's cfg.json (e.g. layers.20); empty = the recorded one."""

    width: int = valid(0, ">= 0")
    """Width of the printed comparison in characters; 0 = the terminal's width. Under 59: two blocks instead of two columns."""

    def __post_init__(self) -> None:
        check_valid(self)
        if not self.sae:
            raise SaescaleError(f"no SAE folder given: {USAGE}")
        if self.latent is None:
            raise SaescaleError(f"--latent is required (the index of the latent to steer with): {USAGE}")
        if not self.prompt.strip():
            raise SaescaleError("the prompt is empty: give --prompt with some text to continue")
        from saescale.steer.hook import check_mode

        check_mode(self.scale, self.clamp)


def recorded(sae_dir: str, model: str, hook: str) -> tuple[str, str, bool]:
    """(model, hook, prepend BOS) for the SAE in ``sae_dir``: the overrides, else what its cfg.json records
    (``extra.activations``; hook '' = the model's default). Read only when an override is missing."""
    if model and hook:
        return model, hook, True
    from saescale.sae.io import read_cfg

    try:
        _, extra = read_cfg(sae_dir)
    except SaescaleError as e:
        raise SaescaleError(f"{e} -- or give both --model and --hook") from None
    rec = extra.get("activations") if isinstance(extra.get("activations"), dict) else {}
    if not rec.get("model") and not model:
        raise SaescaleError(f"{sae_dir}/cfg.json records no language model (trained on synthetic data?): give --model "
                            "and --hook of a model whose activations the SAE reads")
    return model or rec["model"], hook or rec.get("hook") or "", bool(rec.get("prepend_bos", True))


def labels(cfg: SteerCommand) -> tuple[str, str]:
    """Column labels: the unsteered one, and the steered one naming the latent and the amount."""
    how = f"x {cfg.scale:+g}" if cfg.clamp is None else f"clamped to {cfg.clamp:g}"
    return "unsteered", f"steered: latent {cfg.latent} {how}"


def run_steer(cfg: SteerCommand, lm: tuple | None = None):
    """Load the SAE and its model (or use ``lm`` = (model, tokenizer)), print the two greedy continuations
    side by side; returns the :class:`~saescale.steer.generate.Continuations`."""
    from saescale.activations.hooks import default_hook, hook_width, resolve_hook
    from saescale.activations.lm import load_model
    from saescale.sae.io import load_sae
    from saescale.steer.display import side_by_side
    from saescale.steer.generate import compare, prompt_ids
    from saescale.steer.hook import check_latent, check_width

    sae = load_sae(cfg.sae).eval()  # any format load_sae reads (an OpenAI .pt too); one line for a missing path
    check_latent(sae, cfg.latent)
    name, hook, bos = recorded(cfg.sae, cfg.model, cfg.hook)
    model, tokenizer = lm if lm is not None else load_model(name)
    hook = hook or default_hook(model)
    resolve_hook(model, hook)
    check_width(sae, hook, hook_width(model, hook))
    ids = prompt_ids(tokenizer, cfg.prompt, bos)
    out = compare(model, tokenizer, sae, hook, cfg.latent, ids, cfg.tokens, scale=cfg.scale, clamp=cfg.clamp)
    width = cfg.width or shutil.get_terminal_size((100, 24)).columns
    amount = f"scale {cfg.scale:g}" if cfg.clamp is None else f"clamp {cfg.clamp:g}"
    print(textwrap.fill(f"model {name}, hook {hook}, SAE {cfg.sae} ({sae.cfg.arch}, n={sae.cfg.n}), latent "
                        f"{cfg.latent}, {amount}; greedy, {cfg.tokens} new tokens", width, break_on_hyphens=False))
    print(textwrap.fill(f"prompt: {cfg.prompt!r}", width) + "\n")
    left, right = labels(cfg)
    print(side_by_side(left, out.plain, right, out.steered, width))
    print(f"\n{difference(out.plain_ids.tolist(), out.steered_ids.tolist())}")
    return out


def difference(plain: list[int], steered: list[int]) -> str:
    """One line saying whether the two continuations' token ids differ, and from which new token."""
    if plain == steered:
        return "the continuations are identical (same token ids)"
    first = next((i for i, (a, b) in enumerate(zip(plain, steered)) if a != b), min(len(plain), len(steered)))
    return f"the continuations differ from new token {first + 1} on"
