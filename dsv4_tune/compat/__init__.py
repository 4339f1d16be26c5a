"""Drop-in faces of other libraries' entry points, served by dsv4-tune's dispatched kernels.

``from dsv4_tune.compat import flash_mla`` instead of ``import flash_mla``: see :mod:`.flash_mla`.
"""
