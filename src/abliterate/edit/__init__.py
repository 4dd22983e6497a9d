"""The weight edit: rank-1 orthogonalization shaped by a per-layer kernel, applied in place with
an exact reset, and the LoRA factors that express it."""
