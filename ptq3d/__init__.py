"""ptq3d: post-training quantization benchmarking for feed-forward 3D geometry transformers."""

__version__ = "0.1.0"
