"""micar_jax: MicarVLMoE medical report generation in JAX/Flax."""

__version__ = "0.1.0"
