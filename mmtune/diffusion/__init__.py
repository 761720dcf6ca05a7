"""Image editing with diffusers (InstructPix2Pix): config, model parts, data, evaluation.

The recipe that trains it is mmtune.recipes.instruct_pix2pix.
"""
