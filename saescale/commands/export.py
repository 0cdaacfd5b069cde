"""``saescale export``: an SAE as a SAELens or sparsify folder, loadable by ``sae_lens.SAE.load_from_disk`` or
``sparsify.SparseCoder.load_from_disk`` and computing the same codes and reconstructions (docs/interop.md)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from saescale.errors import SaescaleError


@dataclass
class ExportCommand:
    """Write an SAE in SAELens's or sparsify's format (normalisation constants folded into the weights; what cannot be written exactly is refused)."""

    sae: str = field(metadata={"positional": True})
    """SAE to export: a saescale SAE folder (e.g. runs/<run>/sae), or any SAE saescale reads (a SAELens or sparsify folder, an OpenAI .pt state dict)."""

    format: Literal["saelens", "sparsify"] = "saelens"
    """Format to write: 'saelens' (cfg.json + sae_weights.safetensors; architectures topk, relu, gated, jumprelu, batchtopk, matryoshka; relu transcoders and skip transcoders) or 'sparsify' (cfg.json + sae.safetensors; topk with --normalize mean_sq or none only; topk transcoders and skip transcoders with one width in and out)."""

    out: str = ""
    """Folder to write (an existing one is replaced atomically: the old folder stays whole until the new one is complete). Empty: <SAE>-<format> beside the SAE."""

    def __post_init__(self) -> None:
        if not self.sae:
            raise SaescaleError("give the SAE to export: saescale export SAE_DIR --format saelens --out DIR")

    @property
    def out_dir(self) -> Path:
        """--out, else the SAE's path with -<format> appended."""
        src = Path(self.sae)
        return Path(self.out) if self.out else src.with_name(f"{src.stem if src.is_file() else src.name}-{self.format}")


def run_export(cfg: ExportCommand) -> Path:
    """Export the SAE and print where it went."""
    from saescale.sae.formats.export import export_sae

    path = export_sae(cfg.sae, cfg.format, cfg.out_dir)
    print(f"wrote {path} ({cfg.format})")
    return path
