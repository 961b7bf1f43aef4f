"""The compressed model file (``.pjz``): sparse relative indices, codebooks, affine integers,
canonical Huffman coding, bit packing. Loads without pickle; validates every length it reads.

::

    info = penjing.save(model, "model.pjz")   # FileInfo: bytes, per-tensor codec and parts
    state = penjing.load("model.pjz")         # a plain state_dict for the same architecture
    model.load_state_dict(state)

What is stored
--------------
``save`` bakes a *copy* of the model (parametrizations replaced by their values) and writes
every tensor of its state_dict. Each tensor gets the smallest of the codecs that apply (see
:mod:`penjing.codec.tensors`): ``raw``; ``sparse-raw`` (relative sparse index + nonzero
values); ``codebook`` / ``sparse-codebook`` (distinct values + one index each; Deep
Compression's storage); ``affine`` (b-bit integers with scale and zero point). Index streams
are bit-packed or canonical-Huffman coded, whichever is smaller. Loading gives tensors
bit-identical to the baked model's (affine: equal, see below).

The codec hint protocol (for methods that change how weights are represented)
-------------------------------------------------------------------------------
Given an ``nn.Module``, ``save`` asks every parametrization that defines ``codec_hint`` how its
weight may be stored, *before* baking::

    hint = p.codec_hint(v)   # v: the value p receives (the output of the parametrizations
                             # below it); a method taking no argument is called as p.codec_hint()

``hint`` is a dict, one of:

* ``{"codebook_bits": b}`` -- the baked weight has at most ``2^b`` distinct values (counting
  0): stored as a codebook plus ``b``-bit indices, sparse (relative index) if it has zeros.
* ``{"affine": {"bits": b, "scale": Tensor, "zero_point": Tensor, "axis": int | None}}`` --
  the baked weight equals ``(q - zero_point) * scale`` exactly, for integers ``q`` spanning at
  most ``2^b`` values; ``axis`` is the channel axis of a per-channel ``scale``/``zero_point``
  (``None``: one of each). ``save`` recomputes ``q = round(w / scale + zero_point)`` and
  checks that the formula gives the weight back *bit for bit* (in the scale's dtype, then
  cast to the weight's); if not, it warns and stores the tensor without the hint. (The one
  liberty: a ``-0.0`` weight comes back as ``+0.0``, since ``q = 0`` carries no sign.)

When several parametrizations of one weight answer, the outermost (last attached) wins.
Tensors without a hint are stored raw, or sparse, whichever is smaller; a tensor with at
most 256 distinct values is also tried as a codebook, so a baked state_dict compresses well
without hints. ``index_bits`` (default 8 for conv kernels, 5 otherwise) is the width of the
relative sparse index.
"""

from penjing.codec.errors import CorruptFileError
from penjing.codec.file import (
           MAX_ELEMENTS,
           FileInfo,
           TensorInfo,
           collect_hints,
           inspect,
           load,
           load_stored,
           loads,
           save,
)
from penjing.codec.tensors import CODEC_NAMES, decode_tensor, encode_tensor

__all__ = ["CODEC_NAMES", "MAX_ELEMENTS", "CorruptFileError", "FileInfo", "TensorInfo", "collect_hints",
           "decode_tensor", "encode_tensor", "inspect", "load", "load_stored", "loads", "save"]
