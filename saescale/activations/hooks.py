"""Hook points: name -> module of a Hugging Face causal LM, capture of their outputs.

Names are relative to the model's stack of decoder blocks (found generically as the
longest outermost ``nn.ModuleList`` in the model, e.g. ``model.model.layers`` for llama):

- ``layers.N``            residual stream after block N (the block's output hidden state, (B, T, d))
- ``layers.N.mlp``        output of block N's MLP (before it is added to the residual)
- ``layers.N.self_attn``  output of block N's attention (first element of its tuple output)
- ``layers.N.<path>``     any other sub-module of block N
- any full module path of the model (e.g. ``model.norm``)
- ``<any of these>.input`` the *input* of that module (its first positional argument), e.g.
  ``layers.N.mlp.input``: block N's MLP input, after its layer norm (a transcoder's source)

:func:`capture` stops the forward pass right after the last requested module has run, so
later blocks and the LM head cost nothing.
"""

from __future__ import annotations

import re

import torch
from torch import nn

from saescale.errors import SaescaleError


class _StopForward(Exception):
    """Raised by a capture hook once every requested output is captured (never escapes capture)."""


def find_blocks(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The model's decoder blocks: (module path, the longest outermost ``nn.ModuleList``).

    Lists nested inside another list's elements (e.g. MoE experts inside blocks) are ignored.
    """
    lists = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.ModuleList) and len(m) > 0]
    lists = [(name, m) for name, m in lists if not any(name.startswith(f"{other}.") for other, _ in lists)]
    if not lists:
        raise SaescaleError(f"{type(model).__name__} has no list of decoder blocks; use a transformer causal LM")
    return max(lists, key=lambda item: len(item[1]))


def n_layers(model: nn.Module) -> int:
    """Number of decoder blocks."""
    return len(find_blocks(model)[1])


def default_hook(model: nn.Module) -> str:
    """Residual stream after block round(2/3 * n_layers): ``layers.20`` for 30 blocks, ``layers.8`` for 12.

    2n/3 is never exactly half-way between integers, so the rounding is (2n + 1) // 3,
    capped at the last block.
    """
    n = n_layers(model)
    return f"layers.{min((2 * n + 1) // 3, n - 1)}"


def valid_hooks_hint(model: nn.Module) -> str:
    """A compact list of valid hook names for error messages."""
    n = n_layers(model)
    return (f"layers.0..{n - 1}, layers.N.mlp, layers.N.self_attn, layers.N.<submodule>, or a full module path, "
            "each optionally with .input (the module's input)")


INPUT = ".input"  # suffix naming a module's input instead of its output


def is_input(hook: str) -> bool:
    """Whether ``hook`` names a module's input (``<module>.input``) rather than its output."""
    return hook.endswith(INPUT)


def resolve_hook(model: nn.Module, hook: str) -> nn.Module:
    """The module whose output (or, for ``<module>.input``, input) hook point ``hook`` names; SaescaleError
    listing valid names if none."""
    if is_input(hook):
        return resolve_hook(model, hook[: -len(INPUT)])
    _, blocks = find_blocks(model)
    m = re.fullmatch(r"layers\.(\d+)(?:\.(.+))?", hook)
    try:
        if m is None:
            return model.get_submodule(hook)
        block = blocks[int(m.group(1))] if int(m.group(1)) < len(blocks) else None
        if block is None:
            raise AttributeError(hook)
        return block.get_submodule(m.group(2)) if m.group(2) else block
    except AttributeError:
        raise SaescaleError(f"unknown hook point '{hook}': valid names are {valid_hooks_hint(model)}") from None


def capture(
    model: nn.Module,
    hooks: list[str],
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Outputs of the ``hooks`` modules for ``input_ids`` (B, T): {hook: (B, T, d)}, detached.

    Tuple outputs give their first element; ``<module>.input`` hooks the module's first positional
    input. If a module runs more than once, its first output is kept. The forward pass is aborted as
    soon as every hook has fired. ``out`` holds the hooks in the order they fired.
    """
    modules = {h: resolve_hook(model, h) for h in hooks}
    out: dict[str, torch.Tensor] = {}

    def keep(name: str, value) -> None:
        if name not in out:
            out[name] = (value[0] if isinstance(value, tuple) else value).detach()
        if len(out) == len(modules):
            raise _StopForward

    def make_hook(name: str):
        def hook(_module, _inputs, output):
            keep(name, output)

        return hook

    def make_pre_hook(name: str):
        def pre_hook(_module, inputs):
            if not inputs:
                raise SaescaleError(f"hook point '{name}': the module takes no positional input; hook its output instead")
            keep(name, inputs[0])

        return pre_hook

    handles = [m.register_forward_pre_hook(make_pre_hook(h)) if is_input(h) else m.register_forward_hook(make_hook(h)) for h, m in modules.items()]
    try:
        with torch.no_grad():
            model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    except _StopForward:
        pass
    finally:
        for handle in handles:
            handle.remove()
    missing = [h for h in modules if h not in out]
    if missing:
        raise SaescaleError(f"hook points {missing} never ran in the forward pass; pick modules the model uses")
    return out


def hook_order(model: nn.Module, hooks: list[str]) -> list[str]:
    """``hooks`` in the order they run in a forward pass (a dummy forward on 2 tokens)."""
    device = next(model.parameters()).device
    return list(capture(model, hooks, torch.zeros(1, 2, dtype=torch.long, device=device)))


def check_target(model: nn.Module, source: str, target: str) -> None:
    """A transcoder's target hook must run after its source hook: one line otherwise."""
    if target == source:
        raise SaescaleError(f"--target-hook {target} is the source hook itself (that is an SAE): drop --target-hook, "
                            "or name a later module's output, e.g. layers.N.mlp for --hook layers.N.mlp.input")
    if hook_order(model, [source, target])[0] != source:
        raise SaescaleError(f"--target-hook {target} runs before --hook {source} in the forward pass, so it cannot be "
                            "computed from it: name a later module (e.g. layers.N.mlp for --hook layers.N.mlp.input)")


def hook_width(model: nn.Module, hook: str) -> int:
    """Width d of hook point ``hook``'s output, probed with a dummy forward on 2 tokens."""
    device = next(model.parameters()).device
    ids = torch.zeros(1, 2, dtype=torch.long, device=device)
    return capture(model, [hook], ids)[hook].shape[-1]
