"""Format constants and codec defaults, in one place and free of torch (cheap to import).

The numbers here that a decoder must agree on (the PMF total and exp table of the integer prior)
are defined by `format/SPEC.md`, which points to this module as where vqc keeps them; they are
part of the v1 format and never change. The others are limits and defaults of this
implementation.
"""

from __future__ import annotations

#: Quality `vqc compress` and `vqcodec.compress` use when none is given, on the continuous
#: 0..100 scale of `vqcodec.rdo.plan`: the bottom of the full-size stretch (vqc-f4k512-v2 at
#: scale 1, lambda about 0.10; about 0.30 bpp / 27.0 dB on the training crops), close to the
#: rate of the former default (Q 76 of the scale before downscaling, 0.274 bpp on Kodak); on
#: today's scale Q 76 codes 7/8 of the size.
DEFAULT_QUALITY = 90.0

#: Encoder effort (0..9, `vqcodec.rdo.EFFORTS`) used when none is given.
DEFAULT_EFFORT = 6

#: Largest image, in pixels (width * height), that is read as input (`vqc compress`,
#: `vqcodec.images.load_image`): 2**28 (about 16k x 16k).
MAX_PIXELS = 268_435_456

#: Largest upsampling factor per side of a file with a coded-size chunk (format/SPEC.md, "Chunks",
#: type 5): width <= MAX_UPSCALE * coded_width, height <= MAX_UPSCALE * coded_height, so the
#: display pixels (and the upsampler's work and output) stay within 64x the coded ones.
MAX_UPSCALE = 8

#: Largest image a `.vqc` file may hold to be decoded unless the caller raises it (`max_pixels`,
#: `vqc decompress --max-pixels`; `container.DEFAULT_MAX_PIXELS`): 2**26 (8192 x 8192, 67 MP).
#: Decoding holds the whole image (Pillow: 4 bytes per pixel for RGB and RGBA) and its alpha
#: plane: a real `vqc decompress` of an 8192 x 8192 RGBA file peaks at 848 MiB (0.89 GB) of RSS, and
#: about 412 MiB + 6.8 bytes per pixel, 2.2 GB or more, at 2**28 (issue 21).
DECODE_MAX_PIXELS = 67_108_864

#: Prior tile the encoder writes, in latent positions per side: each tile is an independent
#: range-coder stream (container header fields tile_h, tile_w).
PRIOR_TILE = 64

#: Largest prior tile a file may ask for, in latent positions per side and in all (decoder limits,
#: format/SPEC.md "Resource limits and conforming payloads"; a larger tile is a VqcLimitError).
MAX_PRIOR_TILE = 256
MAX_PRIOR_TILE_POSITIONS = 2**14

#: Most tiles a file may have (reader limit, VqcLimitError): a 2**28-pixel image coded by vqc has
#: at most 2**20.
MAX_TILES = 2**20

#: Core size, in pixels per side, of the tiles the VQ-VAE encoder and decoder work on (with a
#: halo, so the result equals a whole-image pass exactly).
PIXEL_TILE = 256

#: Each integer PMF sums to 2**PMF_BITS (format/SPEC.md, "PMF from logits").
PMF_BITS = 20

#: exp table step: 2**(LUT_STEP_SHIFT - 8) nat = 1/16 nat per entry (8 = activation fraction bits).
LUT_STEP_SHIFT = 4

#: Entries of the exp table: 512 steps cover 32 nats; beyond that a symbol gets the floor probability.
LUT_LEN = 512

#: The exp table holds round(2**LUT_ONE_BITS * exp(-k / 16)).
LUT_ONE_BITS = 30
