"""Writers execute a plan: they take :class:`~ckptconv.store.Output` objects (name, shape, dtype
known from metadata, data on demand) and put them somewhere.

* :mod:`ckptconv.writers.safetensors`: stream outputs into one safetensors file or a Hugging Face
  sharded set, atomically, with a CRC-32C of every tensor in ``__metadata__``.
"""
