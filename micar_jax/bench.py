"""`python -m micar_jax.bench`: the entry point of micar_jax/performance/bench.py."""

from micar_jax.performance import bench

if __name__ == "__main__":
  bench.program()
