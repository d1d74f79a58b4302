"""The networks and their weights.

* :mod:`~diffmatch.models.diffmatch`: :class:`~diffmatch.models.diffmatch.DiffMatch`, the whole
  matcher: features → global cost → ``F_init`` → local cost → DDIM sampling of the denoiser, plus the
  optional flow upsampler (stage 2);
* :mod:`~diffmatch.models.cost_volume`: global and local correlation, soft-argmax;
* :mod:`~diffmatch.models.denoiser`: the conditional U-Net;
* :mod:`~diffmatch.models.diffusion`: the noise schedule, ``q(x_t | x_0)`` and DDIM;
* :mod:`~diffmatch.models.upsampler`: stage 2, the flow-upsampling denoiser;
* :mod:`~diffmatch.models.loss`: the masked flow loss both stages train with;
* :mod:`~diffmatch.models.precision`: bf16/fp16 weights with a float32 cost;
* :mod:`~diffmatch.models.weights`: reading and writing checkpoints and exported weights;
* :mod:`~diffmatch.models.official`: converting the released official checkpoints;
* :mod:`~diffmatch.models.onnx`: ONNX export of stage 1;
* :mod:`~diffmatch.models.zeroshot`: nearest-neighbour matching on zero-shot features (DIFT, DINOv2).

The feature extractors are in :mod:`diffmatch.features`.
"""
