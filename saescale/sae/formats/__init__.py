"""SAEs to and from other libraries' files: SAELens and sparsify folders, OpenAI's released state dicts.

Every format converts to and from the one :class:`~saescale.sae.base.SparseAutoencoder` type:
:func:`saescale.sae.io.load_sae` reads any of them (:mod:`.detect` tells them apart by their files),
:func:`.export.export_sae` writes SAELens and sparsify folders. :mod:`.common` has the normalisation
folds, :mod:`.saelens`, :mod:`.sparsify` and :mod:`.openai` each format's mapping; docs/interop.md
the table of what maps, what is folded and what is refused.
"""
